"""Celery application; configuration lives in settings.py under the CELERY_ prefix."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumosite.settings")

app = Celery("pneumosite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
