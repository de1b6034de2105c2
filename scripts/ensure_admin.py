"""Create a local superuser `admin` with a random password if no superuser exists.

The password is written to var/admin_password.txt (mode 600) and printed.
"""

import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumosite.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402


def main() -> None:
    User = get_user_model()
    password_file = Path(settings.VAR_DIR) / "admin_password.txt"
    if User.objects.filter(is_superuser=True).exists():
        hint = f" (password in {password_file})" if password_file.exists() else ""
        names = ", ".join(
            User.objects.filter(is_superuser=True).values_list("username", flat=True)[:5]
        )
        print(f"Superuser account(s): {names}{hint}")
        return
    password = secrets.token_urlsafe(18)
    User.objects.create_superuser("admin", email="", password=password)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    print("Created the local superuser account.")
    print("  username: admin")
    print(f"  password: {password}   (saved in {password_file})")
    print("  Log in at /accounts/login/ or /admin/.")


if __name__ == "__main__":
    main()
