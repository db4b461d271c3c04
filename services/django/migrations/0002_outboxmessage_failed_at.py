from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("leveret", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
