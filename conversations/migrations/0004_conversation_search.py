"""Full-text search over titles and message text: GIN indexes on the search documents.

Built CONCURRENTLY (writes go on while the indexes are built, so the migration is not atomic),
and on PostgreSQL only: elsewhere search falls back to ``icontains`` and the indexes exist in
the migration state alone.
"""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class AddSearchIndex(AddIndexConcurrently):
    """AddIndexConcurrently on PostgreSQL; nothing to do in the database elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("conversations", "0003_reply_attach_count"),
    ]

    operations = [
        AddSearchIndex(
            model_name="conversation",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.search.SearchVector("title", config="simple"),
                name="conversation_title_search",
            ),
        ),
        AddSearchIndex(
            model_name="message",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.search.SearchVector("content", config="simple"),
                name="message_content_search",
            ),
        ),
    ]
