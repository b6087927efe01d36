from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, has_role


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each role to where its day starts."""
    if has_role(request.user, SECRETARY):
        return redirect("scheduling:today")
    if has_role(request.user, PRACTICE_ADMIN):
        return redirect("admin:index")
    if has_role(request.user, PRACTITIONER) and hasattr(request.user, "practitioner"):
        return redirect("scheduling:my_day")
    return render(request, "practice/home.html")
