"""Forms of the staff pages."""

from __future__ import annotations

from django import forms

from diagnoses.models import RetrainingJob
from diagnoses.retraining import MAX_EPOCHS, MODE_DEFAULTS


class RetrainingForm(forms.Form):
    mode = forms.ChoiceField(
        choices=RetrainingJob.Mode.choices, initial=RetrainingJob.Mode.FINE_TUNE
    )
    epochs = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_EPOCHS,
        help_text=(
            f"Default {MODE_DEFAULTS[RetrainingJob.Mode.FINE_TUNE]['epochs']} for fine-tuning, "
            f"{MODE_DEFAULTS[RetrainingJob.Mode.SCRATCH]['epochs']} from scratch."
        ),
    )
    reviewed_since = forms.DateField(
        required=False,
        label="Include reviewed cases since",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Empty: every case whose current review is normal or pneumonia.",
    )
