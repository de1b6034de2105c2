"""Settings for pneumosite.

One module, driven by environment variables with safe local defaults.
See the README for the full table of variables.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from pneumosite.brokers import FILESYSTEM_BROKER_URL, filesystem_broker_options

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    value = value.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    if not value:
        return default
    try:
        return int(value.replace("_", ""))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = env_str(name)
    if not value:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------
VAR_DIR = Path(env_str("PNEUMOSITE_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

PNEUMOSITE_DATA_DIR = Path(
    env_str("PNEUMOSITE_DATA_DIR", str(BASE_DIR.parent / "shared" / "data" / "chest_xray"))
)
PNEUMOSITE_MODELS_DIR = Path(env_str("PNEUMOSITE_MODELS_DIR", str(BASE_DIR / "models")))
PNEUMOSITE_MAX_UPLOAD_BYTES = env_int("PNEUMOSITE_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
PNEUMOSITE_MAX_PIXELS = env_int("PNEUMOSITE_MAX_PIXELS", 50_000_000)
# Local copies of registered model files, loaded by the inference worker.
PNEUMOSITE_MODEL_CACHE_DIR = VAR_DIR / "model-cache"

# --------------------------------------------------------------------------------------
# Core
# --------------------------------------------------------------------------------------
DJANGO_ENV = env_str("DJANGO_ENV", "local").lower()
DEBUG = env_bool("DJANGO_DEBUG", DJANGO_ENV != "production")


def _load_secret_key() -> str:
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    try:
        # O_EXCL: when several processes start at once only one writes the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.05)  # another process is writing it right now
        raise ImproperlyConfigured(f"{path} is empty; delete it or set DJANGO_SECRET_KEY") from None
    key = secrets.token_urlsafe(64)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


SECRET_KEY = _load_secret_key()
if not DEBUG and SECRET_KEY.startswith("change-me"):
    # The placeholder of .env.example is public: never run production with it.
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is still the .env.example placeholder.")

ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "storages",
    "diagnoses.apps.DiagnosesConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "pneumosite.middleware.RequestSizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login; views opt out with @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pneumosite.urls"
WSGI_APPLICATION = "pneumosite.wsgi.application"
ASGI_APPLICATION = "pneumosite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --------------------------------------------------------------------------------------
# Database: SQLite under var/ by default, DATABASE_URL switches (e.g. to PostgreSQL).
# --------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    _db = dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DJANGO_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
    }
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not :memory:) so that a separate Celery worker process can open the
    # test database; tests/conftest.py makes the name unique per pytest run.
    _db.setdefault("TEST", {})["NAME"] = str(VAR_DIR / "test_db.sqlite3")
    _db.setdefault("OPTIONS", {}).setdefault("timeout", 20)
    # Persistent connections are not useful for SQLite.
    _db["CONN_MAX_AGE"] = 0
DATABASES = {"default": _db}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Django's model backend, with a lockout after repeated failed sign-ins (diagnoses.signin).
AUTHENTICATION_BACKENDS = ["diagnoses.backends.LockoutModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --------------------------------------------------------------------------------------
# Static and media files
# --------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_URL = "media/"
MEDIA_ROOT = VAR_DIR / "media"
for _dir in (STATIC_ROOT, MEDIA_ROOT):
    _dir.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing STATIC_ROOT

AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
if AWS_STORAGE_BUCKET_NAME:
    _s3_options = {
        "bucket_name": AWS_STORAGE_BUCKET_NAME,
        "default_acl": "private",
        "querystring_auth": True,
        "querystring_expire": 300,
        "file_overwrite": False,
        # Signature v4 and path-style URLs work with AWS and with MinIO (docker-compose).
        "signature_version": "s3v4",
        "addressing_style": env_str("AWS_S3_ADDRESSING_STYLE", "path"),
    }
    for _opt, _var in (
        ("endpoint_url", "AWS_S3_ENDPOINT_URL"),
        ("region_name", "AWS_S3_REGION_NAME"),
        ("access_key", "AWS_ACCESS_KEY_ID"),
        ("secret_key", "AWS_SECRET_ACCESS_KEY"),
        ("location", "AWS_LOCATION"),
    ):
        if env_str(_var):
            _s3_options[_opt] = env_str(_var)
    _s3_backend = "storages.backends.s3.S3Storage"
    if env_str("AWS_S3_PUBLIC_ENDPOINT_URL"):
        # Signed URLs for the browser name this endpoint (see pneumosite/storage.py).
        _s3_backend = "pneumosite.storage.S3Storage"
        _s3_options["public_endpoint_url"] = env_str("AWS_S3_PUBLIC_ENDPOINT_URL")
    _default_storage = {"BACKEND": _s3_backend, "OPTIONS": _s3_options}
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": "/" + MEDIA_URL},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        ),
    },
}

# Uploads: files above the memory limit are streamed to a temporary file; the request
# size limit (pneumosite.middleware) caps what can be streamed; DATA_UPLOAD_MAX_MEMORY_SIZE
# caps the non-file fields only.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# One upload batch: at most this many files, and a body no larger than they can be.
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("PNEUMOSITE_MAX_UPLOAD_FILES", 20)
PNEUMOSITE_MAX_REQUEST_BYTES = (
    DATA_UPLOAD_MAX_NUMBER_FILES * PNEUMOSITE_MAX_UPLOAD_BYTES + 1024 * 1024
)
DATA_UPLOAD_MAX_MEMORY_SIZE = PNEUMOSITE_MAX_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_PERMISSIONS = 0o640

# --------------------------------------------------------------------------------------
# Security
# --------------------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
# A ward computer is shared: a sign-in lasts a working day, not Django's two weeks.
SESSION_COOKIE_AGE = env_int("PNEUMOSITE_SESSION_SECONDS", 12 * 3600)
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # The container healthcheck calls /healthz over plain HTTP inside the container.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --------------------------------------------------------------------------------------
# Celery (read by pneumosite/celery.py with namespace="CELERY")
# --------------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
PNEUMOSITE_BROKER_DIR = Path(env_str("PNEUMOSITE_BROKER_DIR", str(VAR_DIR / "broker")))

CELERY_TASK_SOFT_TIME_LIMIT = env_int("PNEUMOSITE_TASK_SOFT_TIME_LIMIT", 300)
CELERY_TASK_TIME_LIMIT = env_int("PNEUMOSITE_TASK_TIME_LIMIT", 360)
PNEUMOSITE_TRAINING_SOFT_TIME_LIMIT = env_int("PNEUMOSITE_TRAINING_SOFT_TIME_LIMIT", 3 * 3600)
PNEUMOSITE_TRAINING_TIME_LIMIT = env_int("PNEUMOSITE_TRAINING_TIME_LIMIT", 3 * 3600 + 600)
# A fine-tune job trains for about this long at most (data loading included): it begins no
# epoch that would end later, though the first always runs, and evaluation and registration
# come after. With the defaults a job from the shipped model ends within 10 minutes on 2
# CPU cores (BENCHMARKS.md). 0: no budget.
PNEUMOSITE_FINE_TUNE_TIME_BUDGET = env_int("PNEUMOSITE_FINE_TUNE_TIME_BUDGET", 480)
# Each new pool process of a worker that takes readings loads the active model at once,
# in the background, instead of at its first reading (diagnoses/warmup.py).
PNEUMOSITE_WARM_WORKER = env_bool("PNEUMOSITE_WARM_WORKER", True)
# A running retraining job whose worker has not written a heartbeat for this long is
# marked failed by the "fail-stale-retraining-jobs" periodic task (its worker died).
PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT = env_int("PNEUMOSITE_TRAINING_HEARTBEAT_TIMEOUT", 900)

if CELERY_BROKER_URL:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Unacknowledged (acks_late) messages are redelivered after this many seconds,
        # so it must exceed the longest task (training) or tasks would run twice.
        # PNEUMOSITE_BROKER_VISIBILITY_TIMEOUT overrides it (the fault tests use a few
        # seconds to see a killed worker's message redelivered).
        "visibility_timeout": env_int(
            "PNEUMOSITE_BROKER_VISIBILITY_TIMEOUT", PNEUMOSITE_TRAINING_TIME_LIMIT + 3600
        ),
    }
    # Results go to Redis when the broker is Redis; other brokers get none unless set.
    _broker_is_redis = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
    CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or (
        CELERY_BROKER_URL if _broker_is_redis else None
    )
    CELERY_RESULT_EXPIRES = 24 * 3600
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS: dict = {}
    # Optional prefix for every Redis key (lets tests or several sites share one Redis).
    if env_str("PNEUMOSITE_BROKER_KEY_PREFIX"):
        _prefix = env_str("PNEUMOSITE_BROKER_KEY_PREFIX")
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = _prefix
        CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS["global_keyprefix"] = _prefix
else:
    # Embedded broker: plain files under var/broker, no server needed.
    CELERY_BROKER_URL = FILESYSTEM_BROKER_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(PNEUMOSITE_BROKER_DIR)
    CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or None

CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = not CELERY_RESULT_BACKEND
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TIMEZONE = TIME_ZONE

CELERY_TASK_QUEUES = (
    Queue("inference", Exchange("inference", type="direct"), routing_key="inference"),
    Queue("training", Exchange("training", type="direct"), routing_key="training"),
)
CELERY_TASK_DEFAULT_QUEUE = "inference"
CELERY_TASK_DEFAULT_EXCHANGE = "inference"
CELERY_TASK_DEFAULT_ROUTING_KEY = "inference"
CELERY_TASK_ROUTES = {
    "diagnoses.tasks.run_prediction": {"queue": "inference", "routing_key": "inference"},
    "diagnoses.tasks.run_retraining": {"queue": "training", "routing_key": "training"},
}
CELERY_TASK_ANNOTATIONS = {
    "diagnoses.tasks.run_retraining": {
        "soft_time_limit": PNEUMOSITE_TRAINING_SOFT_TIME_LIMIT,
        "time_limit": PNEUMOSITE_TRAINING_TIME_LIMIT,
    },
}
# Periodic tasks; `make run` starts celery beat only when this is non-empty.
CELERY_BEAT_SCHEDULE: dict = {
    # Re-sends predictions whose message was never sent (broker down) or was lost.
    "requeue-stale-predictions": {
        "task": "diagnoses.tasks.requeue_stale_predictions",
        "schedule": 60.0,
    },
    # Marks running retraining jobs whose worker stopped sending heartbeats as failed.
    "fail-stale-retraining-jobs": {
        "task": "diagnoses.tasks.fail_stale_retraining_jobs",
        "schedule": 60.0,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --------------------------------------------------------------------------------------
# Logging: JSON lines on stdout in production, readable console output locally.
# --------------------------------------------------------------------------------------
LOG_LEVEL = env_str("DJANGO_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "pneumosite.logging.JsonFormatter"},
        "console": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "console" if DEBUG else "json",
        },
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["stdout"], "level": LOG_LEVEL, "propagate": False},
    },
}
