import django.db.models.deletion
from django.db import migrations, models

BATCH = 2000


def link_transcripts(apps, schema_editor):
    """Before versions every conversation was one line: each message follows the one before."""
    Message = apps.get_model("conversations", "Message")
    previous: dict[int, int] = {}
    changed = []
    rows = Message.objects.order_by("conversation_id", "created_at", "id").only(
        "id", "conversation_id"
    )
    for message in rows.iterator(chunk_size=BATCH):
        message.parent_id = previous.get(message.conversation_id)
        previous = {message.conversation_id: message.id}
        if message.parent_id is not None:
            changed.append(message)
        if len(changed) >= BATCH:
            Message.objects.bulk_update(changed, ["parent"])
            changed = []
    Message.objects.bulk_update(changed, ["parent"])


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0004_conversation_search"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="current_leaf",
            field=models.ForeignKey(
                blank=True,
                help_text="The last message of the path shown (a version picked); empty: the latest.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="conversations.message",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                help_text="The message this one follows; messages with the same parent are versions (a regenerated reply, an edited message). Empty for a conversation's first message.",
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="conversations.message",
            ),
        ),
        migrations.RunPython(link_transcripts, migrations.RunPython.noop, elidable=True),
    ]
