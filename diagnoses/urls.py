# Placeholder created with the project foundation; replaced by the cases views.
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import path

app_name = "diagnoses"


@login_required
def home(request):
    return render(request, "diagnoses/home.html")


urlpatterns = [
    path("", home, name="home"),
]
