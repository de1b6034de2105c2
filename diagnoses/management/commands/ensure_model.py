from django.conf import settings
from django.core.management.base import BaseCommand

from diagnoses.services import ensure_models


class Command(BaseCommand):
    help = (
        "Register every model folder under PNEUMOSITE_MODELS_DIR that is not registered yet "
        "(copies model.keras into storage) and activate the newest one if none is active. "
        "Idempotent."
    )

    def handle(self, *args, **options):
        registered, activated = ensure_models(settings.PNEUMOSITE_MODELS_DIR)
        for model_version in registered:
            self.stdout.write(f"Registered model version {model_version.name}")
        if activated is not None:
            self.stdout.write(f"Activated model version {activated.name}")
        if not registered and activated is None:
            self.stdout.write("Model versions up to date")
