from django import template

register = template.Library()


@register.simple_tag
def reading_text(label: str | None, probability: float | None) -> str:
    """The reading in words, e.g. "Pneumonia likely — 97.3%"."""
    if not label or probability is None:
        return "No reading yet"
    percent = f"{probability * 100:.1f}%"
    if label == "pneumonia":
        return f"Pneumonia likely — {percent}"
    return f"Normal likely — {percent} pneumonia probability"


@register.filter
def percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"
