from datetime import timedelta

from django.core.management.base import BaseCommand

from diagnoses.services import requeue_stale_predictions


class Command(BaseCommand):
    help = "Re-send queued predictions whose task was not sent or was lost."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            default=120,
            metavar="SECONDS",
            help="Only predictions queued (or last sent) more than SECONDS ago (default 120).",
        )

    def handle(self, *args, older_than: int, **options):
        sent = requeue_stale_predictions(older_than=timedelta(seconds=older_than))
        self.stdout.write(f"Requeued {len(sent)} prediction(s)")
