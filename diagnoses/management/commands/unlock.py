from django.core.management.base import BaseCommand

from diagnoses import signin


class Command(BaseCommand):
    help = "Unlock an account locked out by failed sign-ins (diagnoses/signin.py)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, **options):
        forgotten = signin.clear_failures(options["username"])
        self.stdout.write(f"{options['username']}: {forgotten} failed sign-in(s) forgotten")
