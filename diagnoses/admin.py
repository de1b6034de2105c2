"""Staff admin: case review (with a review queue), model versions, retraining jobs.

Thin: queries come from diagnoses.selectors_staff, every change goes through a service
(diagnoses.reviews, diagnoses.retraining, diagnoses.services). Images are shown through the
app's auth-checked image views, never through public media URLs.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from diagnoses import retraining, reviews, selectors_staff, services
from diagnoses.models import (
    Case,
    ModelVersion,
    Prediction,
    RetrainingJob,
    Review,
    ReviewQueueCase,
    SignInFailure,
)
from diagnoses.selectors_staff import Agreement
from diagnoses.signin_forms import AdminSignInForm

admin.site.index_template = "admin/diagnoses/index.html"  # adds links to the staff pages
admin.site.login_form = AdminSignInForm  # says when an account is locked out

REVIEW_PERMISSION = reviews.REVIEW_PERMISSION


def _is_staff_with(request, perm: str) -> bool:
    return reviews.is_staff_with(request.user, perm)


def _can_see_cases(request) -> bool:
    return _is_staff_with(request, "diagnoses.view_case") or _is_staff_with(
        request, "diagnoses.change_case"
    )


def _percent(value) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


# --------------------------------------------------------------------------------------
# Case list filters (on the annotations of selectors_staff.cases_for_review)
# --------------------------------------------------------------------------------------
class ReadingFilter(admin.SimpleListFilter):
    title = "reading"
    parameter_name = "reading"

    def lookups(self, request, model_admin):
        return [*Prediction.Label.choices, ("none", "No reading yet")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(reading_label__isnull=True)
        if self.value() in Prediction.Label.values:
            return queryset.filter(reading_label=self.value())
        return queryset


class ReviewedFilter(admin.SimpleListFilter):
    title = "reviewed"
    parameter_name = "reviewed"

    def lookups(self, request, model_admin):
        return [("yes", "Reviewed"), ("no", "Not reviewed"), *Review.Verdict.choices]

    def queryset(self, request, queryset):
        value = self.value()
        if value in ("yes", "no"):
            return queryset.filter(review_verdict__isnull=value == "no")
        if value in Review.Verdict.values:
            return queryset.filter(review_verdict=value)
        return queryset


class AgreementFilter(admin.SimpleListFilter):
    title = "model vs reviewer"
    parameter_name = "agreement"

    def lookups(self, request, model_admin):
        return Agreement.CHOICES

    def queryset(self, request, queryset):
        if self.value() in dict(Agreement.CHOICES):
            return queryset.filter(agreement=self.value())
        return queryset


class ModelVersionFilter(admin.SimpleListFilter):
    title = "model version (of the reading)"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [(name, name) for name in selectors_staff.model_version_names()]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(reading_model=self.value())
        return queryset


# --------------------------------------------------------------------------------------
# Case inlines
# --------------------------------------------------------------------------------------
class PredictionInline(admin.TabularInline):
    model = Prediction
    fields = (
        "model_version",
        "status",
        "probability",
        "label",
        "threshold",
        "queued_at",
        "finished_at",
        "inference_ms",
        "error_message",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ("-queued_at", "-pk")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("model_version")

    def has_view_permission(self, request, obj=None):
        return _can_see_cases(request)  # whoever sees the case sees its predictions

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReviewInline(admin.TabularInline):
    """Earlier reviews read-only (never changed or deleted), plus one empty row to add a
    review; CaseAdmin.save_formset records it with reviews.record_review(request.user)."""

    model = Review
    fields = ("created_at", "reviewer", "verdict", "comment")
    readonly_fields = ("created_at", "reviewer")
    extra = 1
    can_delete = False
    ordering = ("-created_at", "-pk")
    verbose_name = "review"
    verbose_name_plural = "reviews (newest first, the newest is current; add one in the empty row)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("reviewer")

    def has_view_permission(self, request, obj=None):
        return _can_see_cases(request)

    def has_add_permission(self, request, obj=None):
        return obj is not None and _is_staff_with(request, REVIEW_PERMISSION)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------
@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = (
        "thumbnail_tag",
        "__str__",
        "created_at",
        "reading_display",
        "probability_display",
        "status_display",
        "verdict_display",
        "agreement_display",
        "reading_model_display",
    )
    list_display_links = ("thumbnail_tag", "__str__")
    list_filter = (
        ReadingFilter,
        ReviewedFilter,
        AgreementFilter,
        ModelVersionFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("reference",)
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
    fields = (
        "image_preview",
        "reading_summary",
        "reference",
        "created_at",
        "uploaded_by",
        "original_filename",
        "image_format",
        "dimensions",
        "body_share",
        "note",
    )
    readonly_fields = fields
    inlines = (ReviewInline, PredictionInline)
    actions = (
        "confirm_reading",
        "mark_normal",
        "mark_pneumonia",
        "mark_unusable",
        "rerun_with_active_model",
    )

    def get_queryset(self, request):
        return selectors_staff.cases_for_review().select_related("uploaded_by")

    # Cases are created by the upload page; their fields are read-only here. "Change"
    # only lets a reviewer add a review.
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) or _is_staff_with(
            request, REVIEW_PERMISSION
        )

    def has_review_permission(self, request):
        return _is_staff_with(request, REVIEW_PERMISSION)

    def has_rerun_permission(self, request):
        return _is_staff_with(request, "diagnoses.add_prediction") or _is_staff_with(
            request, "diagnoses.change_case"
        )

    def save_model(self, request, obj, form, change):
        pass  # nothing on the case itself is editable

    def save_formset(self, request, form, formset, change):
        if formset.model is not Review:
            return super().save_formset(request, form, formset, change)
        if not self.has_review_permission(request):
            raise PermissionDenied
        # Only the new rows: earlier reviews are read-only and never saved again.
        formset.new_objects = [
            reviews.record_review(
                case=form.instance,
                reviewer=request.user,
                verdict=review_form.cleaned_data["verdict"],
                comment=review_form.cleaned_data.get("comment", ""),
            )
            for review_form in formset.extra_forms
            if review_form.has_changed() and review_form.cleaned_data.get("verdict")
        ]
        formset.changed_objects, formset.deleted_objects = [], []

    # Columns -----------------------------------------------------------------------------
    @admin.display(description="Image")
    def thumbnail_tag(self, obj):
        url = reverse("diagnoses:case_image", args=[obj.pk, "thumbnail"])
        return format_html('<img src="{}" alt="" width="64" loading="lazy">', url)

    @admin.display(description="Reading", ordering="reading_label")
    def reading_display(self, obj):
        return obj.reading_label or "—"

    @admin.display(description="P(pneumonia)", ordering="reading_probability")
    def probability_display(self, obj):
        return _percent(obj.reading_probability) or "—"

    @admin.display(description="Status", ordering="latest_status")
    def status_display(self, obj):
        return obj.latest_status or "—"

    @admin.display(description="Review", ordering="review_verdict")
    def verdict_display(self, obj):
        return obj.review_verdict or "—"

    @admin.display(description="Agreement", ordering="agreement")
    def agreement_display(self, obj):
        if obj.agreement is None:
            return "—"
        return dict(Agreement.CHOICES)[obj.agreement]

    @admin.display(description="Model", ordering="reading_model")
    def reading_model_display(self, obj):
        return obj.reading_model or "—"

    # Detail ------------------------------------------------------------------------------
    @admin.display(description="Image and Grad-CAM overlay")
    def image_preview(self, obj):
        display = reverse("diagnoses:case_image", args=[obj.pk, "display"])
        heatmap = reverse("diagnoses:case_image", args=[obj.pk, "heatmap"])
        original = reverse("diagnoses:case_image", args=[obj.pk, "original"])
        overlay = (
            format_html(
                '<img src="{}" alt="Grad-CAM overlay" style="position:absolute;inset:0;'
                'width:100%;height:100%;opacity:0.5">',
                heatmap,
            )
            if obj.reading_label
            else ""
        )
        return format_html(
            '<div style="position:relative;display:inline-block;max-width:36rem">'
            '<img src="{}" alt="Chest X-ray of case {}" style="display:block;max-width:100%">'
            '{}</div><p><a href="{}">Original file</a> · <a href="{}">Case page</a></p>',
            display,
            obj.pk,
            overlay,
            original,
            reverse("diagnoses:case", args=[obj.pk]),
        )

    @admin.display(description="Reading")
    def reading_summary(self, obj):
        if not obj.reading_label:
            return f"No reading yet (status: {obj.latest_status or 'none'})"
        verdict = obj.review_verdict or "not reviewed"
        agreement = dict(Agreement.CHOICES).get(obj.agreement, "")
        return (
            f"{obj.reading_label}, P(pneumonia) {_percent(obj.reading_probability)} "
            f"(threshold {_percent(obj.reading_threshold)}, model {obj.reading_model}) · "
            f"review: {verdict}" + (f" · {agreement}" if agreement else "")
        )

    @admin.display(description="Size")
    def dimensions(self, obj):
        return f"{obj.width} × {obj.height}"

    # Actions -----------------------------------------------------------------------------
    @admin.action(
        description="Confirm the reading (review = model's reading)", permissions=["review"]
    )
    def confirm_reading(self, request, queryset):
        outcome = reviews.confirm_readings(cases=queryset, reviewer=request.user)
        self.message_user(request, f"{len(outcome.reviewed)} reading(s) confirmed.")
        if outcome.skipped:
            self.message_user(
                request,
                f"{len(outcome.skipped)} case(s) skipped: no reading yet.",
                messages.WARNING,
            )

    def _mark(self, request, queryset, verdict):
        outcome = reviews.review_cases(cases=queryset, reviewer=request.user, verdict=verdict)
        self.message_user(request, f"{len(outcome.reviewed)} case(s) marked {verdict}.")

    @admin.action(description="Mark normal", permissions=["review"])
    def mark_normal(self, request, queryset):
        self._mark(request, queryset, Review.Verdict.NORMAL)

    @admin.action(description="Mark pneumonia", permissions=["review"])
    def mark_pneumonia(self, request, queryset):
        self._mark(request, queryset, Review.Verdict.PNEUMONIA)

    @admin.action(description="Mark unusable", permissions=["review"])
    def mark_unusable(self, request, queryset):
        self._mark(request, queryset, Review.Verdict.UNUSABLE)

    @admin.action(description="Re-run with the active model", permissions=["rerun"])
    def rerun_with_active_model(self, request, queryset):
        try:
            outcome = reviews.rerun_cases(cases=queryset, user=request.user)
        except services.NoActiveModel as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request,
            f"{len(outcome.queued)} prediction(s) queued; "
            f"{len(outcome.already_pending)} already pending.",
        )


@admin.register(ReviewQueueCase)
class ReviewQueueAdmin(CaseAdmin):
    """Unreviewed cases with a reading, the one closest to its threshold first."""

    list_filter = (ReadingFilter, ModelVersionFilter, ("created_at", admin.DateFieldListFilter))
    list_display = (
        "thumbnail_tag",
        "__str__",
        "created_at",
        "reading_display",
        "probability_display",
        "distance_display",
        "reading_model_display",
    )

    def get_queryset(self, request):
        return selectors_staff.review_queue().select_related("uploaded_by")

    def get_ordering(self, request):
        return ["threshold_distance", "created_at", "pk"]

    @admin.display(description="Distance to threshold", ordering="threshold_distance")
    def distance_display(self, obj):
        return _percent(obj.threshold_distance)


# --------------------------------------------------------------------------------------
# Reviews (browse only: reviews are added on the case page and never changed)
# --------------------------------------------------------------------------------------
@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("created_at", "case", "verdict", "reviewer", "comment")
    list_filter = ("verdict", ("created_at", admin.DateFieldListFilter))
    search_fields = ("case__reference",)
    list_select_related = ("case", "reviewer")
    readonly_fields = ("case", "reviewer", "verdict", "comment", "created_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --------------------------------------------------------------------------------------
# Model versions: side-by-side with the active one, activate
# --------------------------------------------------------------------------------------
@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    change_form_template = "admin/diagnoses/modelversion/change_form.html"
    list_display = (
        "name",
        "is_active",
        "created_at",
        "accuracy",
        "sensitivity",
        "specificity",
        "auc",
        "trained_cases",
    )
    list_filter = ("is_active",)
    fields = (
        "name",
        "is_active",
        "created_at",
        "threshold",
        "image_size",
        "normalization",
        "crop_to_body",
        "normalize_detail",
        "detail_bands",
        "training_info",
    )
    readonly_fields = fields
    actions = ("activate_selected",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_trained_cases=Count("trained_on_cases"))

    def has_add_permission(self, request):
        return False  # versions come from `manage.py ensure_model` or a retraining job

    def has_delete_permission(self, request, obj=None):
        return False

    def has_activate_permission(self, request):
        return _is_staff_with(request, "diagnoses.change_modelversion")

    def _metric(self, obj, key):
        return _percent(selectors_staff.summary_metrics(obj).get(key)) or "—"

    @admin.display(description="Test accuracy")
    def accuracy(self, obj):
        return self._metric(obj, "accuracy")

    @admin.display(description="Sensitivity")
    def sensitivity(self, obj):
        return self._metric(obj, "sensitivity")

    @admin.display(description="Specificity")
    def specificity(self, obj):
        return self._metric(obj, "specificity")

    @admin.display(description="AUC")
    def auc(self, obj):
        value = selectors_staff.summary_metrics(obj).get("auc")
        return "—" if value is None else f"{value:.4f}"

    @admin.display(description="Reviewed cases used", ordering="n_trained_cases")
    def trained_cases(self, obj):
        return obj.n_trained_cases

    @admin.display(description="Training")
    def training_info(self, obj):
        info = obj.metrics or {}
        if "retraining_job" not in info:
            return "Registered from a model folder."
        training = info.get("training", {})
        return (
            f"Retraining job {info['retraining_job']} ({info.get('mode')}, base "
            f"{info.get('base_version') or '—'}): {training.get('epochs_run', '?')} epoch(s), "
            f"{training.get('seconds', '?')} s; data {info.get('data', {})}"
        )

    def get_urls(self):
        opts = self.model._meta
        prefix = f"{opts.app_label}_{opts.model_name}"
        return [
            path(
                "<int:object_id>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name=f"{prefix}_activate",
            ),
            path(
                "<int:object_id>/plot/<str:kind>/",
                self.admin_site.admin_view(self.plot_view),
                name=f"{prefix}_plot",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if version is not None:
            extra_context.update(
                comparison=selectors_staff.version_comparison(version),
                can_activate=self.has_activate_permission(request) and not version.is_active,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Activate the selected version", permissions=["activate"])
    def activate_selected(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        self._activate(request, queryset.get())

    def _activate(self, request, version):
        retraining.activate_version(model_version=version, user=request.user)
        self.message_user(
            request, f"{version.name} is now the active model; new predictions use it."
        )

    def activate_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_activate_permission(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=object_id)
        self._activate(request, version)
        return redirect("admin:diagnoses_modelversion_change", version.pk)

    def plot_view(self, request, object_id, kind):
        from diagnoses.file_responses import CACHE_FOR_AN_HOUR, stored_file_response

        if not self.has_view_permission(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=object_id)
        name = (version.plots or {}).get(kind)
        if not name:
            raise Http404("No such plot.")
        return stored_file_response(
            ModelVersion._meta.get_field("model_file").storage,
            name,
            download_name=f"{version.name}-{kind}.png",
            cache_control=CACHE_FOR_AN_HOUR,
        )


# --------------------------------------------------------------------------------------
# Retraining jobs (started and followed on the staff page, listed and cancelled here)
# --------------------------------------------------------------------------------------
@admin.register(RetrainingJob)
class RetrainingJobAdmin(admin.ModelAdmin):
    change_list_template = "admin/diagnoses/retrainingjob/change_list.html"
    list_display = (
        "__str__",
        "status",
        "mode",
        "epochs",
        "progress_display",
        "requested_by",
        "created_at",
        "finished_at",
        "result_link",
    )
    list_filter = ("status", "mode")
    list_select_related = ("requested_by", "result")
    fields = (
        "status",
        "mode",
        "epochs",
        "reviewed_since",
        "options",
        "base_version",
        "progress_display",
        "cancel_requested",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "result_link",
        "error_message",
        "celery_task_id",
        "attempts",
        "log_display",
    )
    readonly_fields = fields
    actions = ("cancel_jobs",)

    def has_add_permission(self, request):
        return False  # started from the staff page (retraining form)

    def has_delete_permission(self, request, obj=None):
        return False

    def has_cancel_permission(self, request):
        return _is_staff_with(request, "diagnoses.change_retrainingjob")

    @admin.display(description="Progress")
    def progress_display(self, obj):
        status = selectors_staff.retraining_job_status(obj)
        page = reverse("diagnoses:retraining_job", args=[obj.pk])
        return format_html(
            '{} · epoch {}/{} · <a href="{}">live page</a>',
            status["phase"] or obj.status,
            status["epoch"],
            status["epochs"],
            page,
        )

    @admin.display(description="Model version")
    def result_link(self, obj):
        if not obj.result_id:
            return "—"
        url = reverse("admin:diagnoses_modelversion_change", args=[obj.result_id])
        return format_html('<a href="{}">{}</a>', url, obj.result.name)

    @admin.display(description="Log (last lines)")
    def log_display(self, obj):
        lines = obj.log_tail.splitlines()
        return format_html(
            '<pre style="max-height:30rem;overflow:auto">{}</pre>',
            format_html_join("\n", "{}", ((line,) for line in lines)),
        )

    @admin.action(description="Cancel the selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        jobs = [job for job in queryset if job.is_active]
        for job in jobs:
            retraining.request_cancel(job=job, user=request.user)
        self.message_user(request, f"Cancellation requested for {len(jobs)} job(s).")


@admin.register(SignInFailure)
class SignInFailureAdmin(admin.ModelAdmin):
    """Failed sign-ins of the lockout window; deleting an account's rows unlocks it.

    Superusers only: a name typed at a failed sign-in is sometimes a mistyped password.
    """

    list_display = ("username", "at")
    search_fields = ("username",)
    readonly_fields = ("username", "at")

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_delete_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
