"""A database that fails under a write: read-only (a failover to a replica,
a full disk), gone, or past a lock or statement timeout.

Before, booking and logging in answered Django's bare "Server Error (500)", with no word on
whether anything was saved. Now the answer is a 503 page, translated, without a trace of the
error, that says what became of the action: not saved, saved (the commit went through and
something after it failed), or, for a login, that the sign-in could not be completed. It is
rendered without a single query, since the database is what fails.

The database is made read-only for real: ``default_transaction_read_only`` on PostgreSQL (for
every new connection, as after a failover), ``PRAGMA query_only`` on SQLite.
"""

import contextlib
import secrets

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent, EventType
from config.testing import DAY, PASSWORD, TEST_ROLES, client_for, make_doctor, make_patient, make_type, trail_owner
from scheduling.models import Appointment

# Anne-Marie Lefèvre (config.testing.make_patient) in the forms the booking page shows her.
ANNE = ["Lefèvre", "LEFÈVRE", "Anne-Marie", "+33612345678", "anne-marie.lefevre@example.fr"]
# What an error page must never show: a trace, SQL, the driver's words (as they are written).
LEAKS = ["Traceback", "INSERT INTO", "SELECT ", "psycopg", "sqlite3", "Error:", "read-only transaction", "readonly"]

NOT_SAVED = {"en": "Not saved", "fr": "Non enregistré"}
NOTHING_SAVED = {"en": "nothing was saved", "fr": "rien n’a été enregistré"}
SAVED = {"en": "was saved", "fr": "a été enregistré"}
SIGN_IN = {"en": "Your sign-in could not be completed", "fr": "Votre connexion n’a pas pu aboutir"}
AGENDA = {"en": ">Agenda<", "fr": ">Agenda<"}


def _pg() -> bool:
    return connection.vendor == "postgresql"


def _owner_connection(dbname: str = ""):
    """A connection of our own to the test database (or ``dbname``), as its owner
    (config.testing.TEST_ROLES when the suite runs as the app's role, which may not alter the
    database nor its trail)."""
    credentials = TEST_ROLES.get("owner_credentials") or connection.settings_dict
    return psycopg.connect(
        dbname=dbname or connection.settings_dict["NAME"],
        user=credentials["USER"],
        password=credentials["PASSWORD"] or None,
        host=credentials["HOST"] or None,
        port=credentials["PORT"] or None,
        autocommit=True,
    )


@contextlib.contextmanager
def read_only_database():
    """Every connection to the database is read-only until the block ends."""
    if _pg():
        name = connection.ops.quote_name(connection.settings_dict["NAME"])
        with _owner_connection() as owner:
            owner.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
            connection.close()  # the next one is opened read-only, as after a failover
            try:
                yield
            finally:
                owner.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
                connection.close()
        return
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA query_only = OFF")


@contextlib.contextmanager
def database_gone_at(statement_start: str):
    """The database goes away when a statement starting with ``statement_start`` is sent, and
    stays away until the block ends. PostgreSQL for real: the database stops taking connections
    and the request's own is terminated (Django would otherwise reconnect). SQLite, which has
    no server to lose: that statement and every later one fail as the driver would."""
    gone = []
    # From another database: PostgreSQL will not close the database one is connected to.
    owner = _owner_connection("postgres") if _pg() else None
    name = connection.ops.quote_name(connection.settings_dict["NAME"])

    def wrapper(execute, sql, params, many, context):
        if not gone and sql.lstrip().startswith(statement_start):
            gone.append(sql)
            if owner is not None:
                owner.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
                owner.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
        if gone and owner is None:
            raise OperationalError("unable to open database file")
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(wrapper):
            yield gone
    finally:
        if owner is not None:
            owner.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            owner.close()
        connection.close()


@contextlib.contextmanager
def trail_refuses_reads():
    """The trail takes write events (a booking's CREATE row) but refuses the rows that record
    reads, which a request writes after its view, once its booking is committed."""
    with connection.cursor() as cursor, trail_owner(cursor):
        if _pg():
            cursor.execute(
                "CREATE FUNCTION test_reads_down() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'reads down'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_reads_down BEFORE INSERT ON audit_auditevent FOR EACH ROW "
                f"WHEN (NEW.event_type = {int(EventType.READ)}) EXECUTE FUNCTION test_reads_down()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_reads_down BEFORE INSERT ON audit_auditevent "
                f"WHEN NEW.event_type = {int(EventType.READ)} BEGIN SELECT RAISE(ABORT, 'reads down'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor, trail_owner(cursor):
            cursor.execute("DROP TRIGGER IF EXISTS test_reads_down" + (" ON audit_auditevent" if _pg() else ""))
            if _pg():
                cursor.execute("DROP FUNCTION IF EXISTS test_reads_down()")


@pytest.fixture
def clinic(practitioner):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    return doctor, make_type(doctor)


def _booking(clinic, patient, **extra) -> dict:
    doctor, kind = clinic
    return {
        "action": "book_existing",
        "patient": str(patient.pk),
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": DAY.isoformat(),
        "time": "10:00",
        "reason": "Renouvellement d'ordonnance",
        "internal_note": "",
        "submission_key": secrets.token_urlsafe(24),
        **extra,
    }


def _front_desk(secretary) -> Client:
    client = client_for(secretary)  # before the database fails: logging in writes
    client.raise_request_exception = False  # what the browser gets, not the exception
    return client


def _assert_error_page(response, *, language: str = "en") -> str:
    body = response.content.decode()
    assert response.status_code == 503, (response.status_code, body[:300])
    assert "no-store" in response["Cache-Control"]
    assert response["Content-Language"] == language
    assert not [leak for leak in LEAKS if leak in body]
    assert not [value for value in ANNE if value.casefold() in body.casefold()]
    return body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["en", "fr"])
def test_a_booking_on_a_read_only_database_says_nothing_was_saved(secretary, clinic, language):
    anne = make_patient()
    client = _front_desk(secretary)

    with read_only_database():
        response = client.post(reverse("scheduling:book"), _booking(clinic, anne), HTTP_ACCEPT_LANGUAGE=language)

    body = _assert_error_page(response, language=language)
    assert NOT_SAVED[language] in body
    assert NOTHING_SAVED[language] in body
    assert AGENDA[language] in body  # the site's menu: the secretary is still logged in
    assert not Appointment.objects.exists()
    assert not AuditEvent.objects.filter(event_type=EventType.CREATE, model_label="scheduling.Appointment").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", ["en", "fr"])
def test_a_login_on_a_read_only_database_says_the_sign_in_could_not_be_completed(secretary, language):
    """Logging in writes (the session, the last login, the trail's login event): none of it can
    be, so the user is told, and is not half logged in afterwards."""
    browser = Client()
    browser.raise_request_exception = False

    with read_only_database():
        response = browser.post(
            reverse("login"),
            {"username": secretary.username, "password": PASSWORD},
            HTTP_ACCEPT_LANGUAGE=language,
        )

    body = _assert_error_page(response, language=language)
    assert SIGN_IN[language] in body
    assert "sophie.secretary" not in body
    assert AGENDA[language] not in body
    assert not AuditEvent.objects.filter(event_type=EventType.LOGIN).exists()
    home = browser.get(reverse("home"))
    assert home.status_code == 302
    assert home["Location"].startswith(reverse("login"))


@pytest.mark.django_db(transaction=True)
def test_a_booking_committed_before_the_trail_failed_says_it_was_saved(secretary, clinic):
    """The booking and its trail row commit; then the reads of the search shown beside it cannot
    be recorded, so the page is withheld (fail closed). The user must not book again."""
    anne = make_patient()
    client = _front_desk(secretary)
    searched = {"find-last_name": "Lefèvre", "find-birth_date": "1984-03-09"}

    with trail_refuses_reads():
        response = client.post(reverse("scheduling:book"), _booking(clinic, anne, **searched))

    body = _assert_error_page(response)
    assert SAVED["en"] in body
    assert NOT_SAVED["en"] not in body
    appointment = Appointment.objects.get()
    assert appointment.patient_id == anne.pk
    assert appointment.start.date() == DAY
    assert AuditEvent.objects.filter(event_type=EventType.CREATE, object_pk=str(appointment.pk)).exists()


@pytest.mark.django_db(transaction=True)
def test_a_booking_whose_database_goes_away_says_nothing_was_saved(secretary, clinic):
    """The database goes away at the booking's insert: the page is still answered, with the
    menu, from what the request already knew (not one query can be made any more)."""
    anne = make_patient()
    client = _front_desk(secretary)

    with database_gone_at('INSERT INTO "scheduling_appointment"') as gone:
        response = client.post(reverse("scheduling:book"), _booking(clinic, anne))

    assert gone, "the booking never reached its insert"
    body = _assert_error_page(response)
    assert NOT_SAVED["en"] in body
    assert AGENDA["en"] in body
    assert not Appointment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_page_read_while_the_database_is_gone_is_withheld(secretary):
    """A page (not a change) whose database goes away: the "cannot be shown" page, nothing of it."""
    anne = make_patient()
    client = _front_desk(secretary)

    with database_gone_at('SELECT "patients_patient"'):
        response = client.get(reverse("patients:detail", args=[anne.pk]))

    body = _assert_error_page(response)
    assert "This page cannot be shown right now" in body
    assert NOT_SAVED["en"] not in body
    assert SAVED["en"] not in body
