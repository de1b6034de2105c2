from django.apps import AppConfig


class DiagnosesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "diagnoses"
    verbose_name = "Diagnoses"

    def ready(self):
        from diagnoses import backends  # noqa: F401 - connects the sign-in signal receiver
