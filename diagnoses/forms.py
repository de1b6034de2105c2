from __future__ import annotations

from django import forms
from django.conf import settings

from diagnoses.imaging import human_size
from diagnoses.models import Prediction
from diagnoses.selectors import CaseFilters


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (Django docs, "Uploading multiple files").

    Only presence is checked here: each file's content is validated on its own by the
    upload service, so that one bad file does not reject the whole batch.
    """

    def __init__(self, *args, **kwargs):
        accept = ".jpg,.jpeg,.png,.dcm,image/jpeg,image/png,application/dicom"
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": accept}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, list | tuple) else ([data] if data else [])
        files = [f for f in files if f]
        if not files and self.required:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        return files


class UploadForm(forms.Form):
    files = MultipleFileField(label="Chest X-rays (JPEG, PNG or DICOM)")
    reference = forms.CharField(
        max_length=100, required=False, help_text="Optional; applies to every file of this upload."
    )
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        max_files = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        self.fields["files"].help_text = (
            f"Up to {max_files} files at once, each at most "
            f"{human_size(settings.PNEUMOSITE_MAX_UPLOAD_BYTES)}."
        )
        self.fields["files"].widget.attrs["data-max-files"] = max_files


class HistoryFilterForm(forms.Form):
    REVIEWED_CHOICES = [("", "Any"), ("yes", "Reviewed"), ("no", "Not reviewed")]

    q = forms.CharField(label="Reference", required=False, max_length=100)
    reading = forms.ChoiceField(
        required=False, choices=[("", "Any")] + list(Prediction.Label.choices)
    )
    status = forms.ChoiceField(
        required=False, choices=[("", "Any")] + list(Prediction.Status.choices)
    )
    created_from = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    created_to = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    reviewed = forms.ChoiceField(required=False, choices=REVIEWED_CHOICES)

    def to_filters(self) -> CaseFilters:
        """The filters from valid fields; invalid ones are ignored."""
        self.is_valid()  # cleaned_data then holds the valid fields only
        data = self.cleaned_data
        reviewed = {"yes": True, "no": False}.get(data.get("reviewed") or "")
        return CaseFilters(
            reading=data.get("reading") or "",
            status=data.get("status") or "",
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            reviewed=reviewed,
            reference=data.get("q") or "",
        )
