import time
import uuid
from datetime import date

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnoses import retraining
from diagnoses.models import RetrainingJob


class Command(BaseCommand):
    help = (
        "Run a retraining job in this process (no Celery), e.g. to measure it: "
        "`manage.py retrain --user admin`. Registers an INACTIVE model version."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="staff username the job is recorded for")
        parser.add_argument(
            "--mode", choices=RetrainingJob.Mode.values, default=RetrainingJob.Mode.FINE_TUNE
        )
        parser.add_argument("--epochs", type=int, help="default: 3 fine-tune, 12 scratch")
        parser.add_argument("--since", type=date.fromisoformat, help="reviews since YYYY-MM-DD")
        parser.add_argument("--learning-rate", type=float)
        parser.add_argument("--limit-per-class", type=int, help="small subsets (smoke runs)")

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        try:
            job = retraining.request_retraining(
                user=user,
                mode=options["mode"],
                epochs=options["epochs"],
                reviewed_since=options["since"],
                options={
                    "learning_rate": options["learning_rate"],
                    "limit_per_class": options["limit_per_class"],
                },
                enqueue=False,
            )
        except (retraining.RetrainingRefused, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Job {job.pk}: {job.mode}, {job.epochs} epoch(s)")
        started = time.monotonic()
        try:
            outcome = retraining.run_job(job_id=job.pk, task_id=f"manage-{uuid.uuid4().hex}")
        except KeyboardInterrupt:
            raise CommandError(f"Interrupted: job {job.pk} cancelled.") from None
        job.refresh_from_db()
        seconds = time.monotonic() - started
        self.stdout.write(f"Job {job.pk} {outcome} in {seconds:.0f} s")
        if job.result:
            self.stdout.write(f"Registered inactive model version {job.result.name}")
            self.stdout.write(f"Test metrics: {job.result.test_metrics}")
        elif job.error_message:
            raise CommandError(job.error_message)
