"""``created_at`` of conversations and messages: the value the service gives (one time for a
conversation and its first messages), else the time of saving, instead of ``auto_now_add``,
which overwrites a given value when the ORM inserts (``bulk_create``, the statements' stock
implementation).

Python's default only: the columns do not change, so the database is not touched (on SQLite an
AlterField would rebuild the tables, and with them the PostgreSQL-only search indexes).
"""

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0006_usage"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="conversation",
                    name="created_at",
                    field=models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="created_at",
                    field=models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
            ],
        ),
    ]
