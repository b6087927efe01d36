"""Keys: the canary check at start-up, key rotation and blind-index rebuilds (docs/security-model.md, "Keys").

Everything runs on the real components: the system check framework, the `rotate_keys`
command, the database. Ciphertexts are compared as stored, read with raw SQL.
"""

import base64
import contextlib
import datetime
import io
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from audit.context import system_context
from audit.fields import Ciphertext, CiphertextError, encrypted_fields
from audit.keys import canary_problem, canary_write, verify_keys_or_exit
from audit.models import AuditEvent, EventType, RotationProgress
from config.testing import DAY, at, book, make_doctor, make_patient, make_type, user_create, wait_until
from patients.models import Patient
from patients.selectors import PatientQuery, patient_search
from scheduling.models import Appointment

ROTATOR = "system:command:rotate_keys"
INDEXED_FIELDS = {"last_name", "first_names", "birth_date", "phone_mobile", "phone_other", "email"}

PEOPLE = [
    {"last_name": "Lefèvre", "first_names": "Anne-Marie", "phone_mobile": "+33612345678"},
    {"last_name": "Martin", "first_names": "Paul", "phone_mobile": "+33611111111", "email": "paul@example.fr"},
    {"last_name": "Nguyễn", "first_names": "Thị Mai", "phone_other": "+33145454545", "nir": ""},
    {"last_name": "Dubois", "first_names": "Léa", "birth_date": datetime.date(2001, 12, 31), "nir": ""},
    {"last_name": "O'Brien", "first_names": "Seán", "notes": "Allergie pénicilline", "nir": ""},
    {"last_name": "Petit", "first_names": "Jules", "address": "3 impasse du Nord\n2e étage", "nir": ""},
]


def fresh_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def clinic(db):
    """Six patients and an appointment (the other model with encrypted columns)."""
    patients = [make_patient(**person) for person in PEOPLE]
    doctor = make_doctor(user_create("dr.rotation"), "Dr Rotation")
    appointment = book(
        doctor,
        patients[0],
        make_type(doctor),
        at(DAY, 9),
        reason="Douleur thoracique",
        internal_note="Rappeler après les résultats",
    )
    canary_write()
    return {"patients": patients, "appointment": appointment}


def raw_tokens(model, columns: list[str] | None = None) -> dict[uuid.UUID, tuple]:
    """The encrypted columns (or ``columns``) exactly as stored, by primary key."""
    qn = connection.ops.quote_name
    columns = columns or [f.column for f in encrypted_fields(model)]
    sql = f"SELECT {qn('id')}, {', '.join(qn(c) for c in columns)} FROM {qn(model._meta.db_table)}"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return {uuid.UUID(str(row[0])): tuple(row[1:]) for row in cursor.fetchall()}


def plaintexts(model) -> dict[uuid.UUID, dict]:
    """Every encrypted field of every row, decrypted (audited, as a system job)."""
    with system_context("tests:read-back"):
        return {
            obj.pk: {f.name: getattr(obj, f.name) for f in encrypted_fields(model)}
            for obj in model._base_manager.order_by("pk")
        }


def rotate(*args) -> str:
    out = io.StringIO()
    call_command("rotate_keys", "--no-progress", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def check() -> None:
    call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def all_differ(before: tuple, after: tuple) -> bool:
    return all(a != b for a, b in zip(before, after, strict=True) if a is not None)


# --- The canary at start-up ------------------------------------------------------------


def test_it_fails_start_up_with_a_wrong_field_key(db, capsys):
    canary_write()
    check()
    verify_keys_or_exit()

    with override_settings(FIELD_ENCRYPTION_KEY=[fresh_key()]):
        with pytest.raises(SystemCheckError, match="FIELD_ENCRYPTION_KEY"):
            check()
        with pytest.raises(SystemExit) as exited:
            verify_keys_or_exit()
    assert exited.value.code not in (0, None)
    assert "FIELD_ENCRYPTION_KEY" in capsys.readouterr().err


def test_it_starts_during_a_rotation_with_the_new_key_first_and_the_old_kept(db):
    canary_write()
    with override_settings(FIELD_ENCRYPTION_KEY=[fresh_key(), *settings.FIELD_ENCRYPTION_KEY]):
        check()
        verify_keys_or_exit()
        assert canary_problem() is None


def test_it_fails_start_up_when_the_old_key_was_dropped_before_rotating(db):
    """New key alone, nothing re-encrypted yet: the canary still needs the old key."""
    canary_write()
    wrong = override_settings(FIELD_ENCRYPTION_KEY=[fresh_key(), fresh_key()])
    with wrong, pytest.raises(SystemCheckError, match="FIELD_ENCRYPTION_KEY"):
        check()


def test_it_reports_a_changed_blind_index_key(db, capsys):
    canary_write()
    with override_settings(BLIND_INDEX_KEY=os.urandom(32)):
        with pytest.raises(SystemCheckError, match="BLIND_INDEX_KEY"):
            check()
        with pytest.raises(SystemExit):
            verify_keys_or_exit()
    assert "rotate_keys --blind-index" in capsys.readouterr().err
    check()


# --- Rotation of the field key ----------------------------------------------------------


def test_it_rotates_every_encrypted_column_to_the_new_key(clinic):
    old, new = list(settings.FIELD_ENCRYPTION_KEY), fresh_key()
    before = {model: (raw_tokens(model), plaintexts(model)) for model in (Patient, Appointment)}
    assert len(before[Patient][0]) == len(PEOPLE)

    with override_settings(FIELD_ENCRYPTION_KEY=[new, *old]):
        output = rotate("--batch-size", "2")
    assert f"{len(PEOPLE) + 1} rows done" in output

    with override_settings(FIELD_ENCRYPTION_KEY=[new]):
        check()
        assert canary_problem() is None
        for model, (tokens, values) in before.items():
            after = raw_tokens(model)
            assert after.keys() == tokens.keys()
            for pk, row in after.items():
                assert all_differ(tokens[pk], row), f"{model._meta.label} {pk} kept a token"
            assert plaintexts(model) == values

    # The old key alone no longer reads anything: the data really moved.
    with override_settings(FIELD_ENCRYPTION_KEY=old):
        with pytest.raises(SystemCheckError, match="FIELD_ENCRYPTION_KEY"):
            check()
        with system_context("tests"), pytest.raises(CiphertextError):
            _ = Patient.objects.get(pk=clinic["patients"][0].pk).last_name

    events = AuditEvent.objects.filter(event_type=EventType.KEY_ROTATION)
    assert {(e.actor_username, e.actor_role) for e in events} == {(ROTATOR, "system")}
    # A start, one event per batch of two (3 patient batches, 1 appointment batch), the end.
    assert [e.extra["stage"] for e in events.order_by("id")] == ["start", *["batch"] * 4, "done"]
    assert events.get(extra__stage="done").extra["rows"] == len(PEOPLE) + 1
    # Re-encryption never decrypts into our code: no read is recorded for the rotation.
    assert not AuditEvent.objects.filter(event_type=EventType.READ, actor_username=ROTATOR).exists()


def test_it_resumes_an_interrupted_rotation_where_it_stopped(clinic):
    old, new = list(settings.FIELD_ENCRYPTION_KEY), fresh_key()
    values = {model: plaintexts(model) for model in (Patient, Appointment)}
    original = raw_tokens(Patient)
    pks = sorted(original)  # rotation walks rows in primary-key order
    notes_at = [f.name for f in encrypted_fields(Patient)].index("notes")

    # A row in the second batch holds a value no key opens: the first run stops there.
    broken = pks[3]
    Patient.objects.filter(pk=broken).update(notes=Ciphertext("gAAAAA-not-a-fernet-token"))
    rotating = override_settings(FIELD_ENCRYPTION_KEY=[new, *old])
    with rotating, pytest.raises((InvalidToken, CiphertextError, CommandError)):
        rotate("--batch-size", "2")

    progress = RotationProgress.objects.get(job="encrypt", model_label="patients.Patient")
    assert (progress.done, progress.last_pk) == (False, str(pks[1]))
    first_run = raw_tokens(Patient)
    for pk in pks[:2]:
        assert all_differ(original[pk], first_run[pk])
    for pk in pks[2:]:  # the failed batch rolled back; later rows untouched
        if pk != broken:
            assert first_run[pk] == original[pk]
    assert first_run[broken][notes_at] == "gAAAAA-not-a-fernet-token"  # never "re-encrypted" as plaintext

    # The operator repairs the row (restores its backup) and runs the command again.
    Patient.objects.filter(pk=broken).update(notes=Ciphertext(original[broken][notes_at]))
    with override_settings(FIELD_ENCRYPTION_KEY=[new, *old]):
        output = rotate("--batch-size", "2")
    assert f"encrypt: {len(pks) - 2 + 1} rows done" in output  # the rest of the patients + the appointment

    second_run = raw_tokens(Patient)
    for pk in pks[:2]:
        assert second_run[pk] == first_run[pk], "a row done by the first run was rotated again"
    for pk in pks[2:]:
        assert all_differ(original[pk], second_run[pk])

    with override_settings(FIELD_ENCRYPTION_KEY=[new]):
        check()
        for model, expected in values.items():
            assert plaintexts(model) == expected


def test_it_rotates_again_to_a_key_that_was_used_before(clinic):
    """K0 -> A -> B -> A: the saved progress of the first move to A must not skip the third."""
    k0, a, b = list(settings.FIELD_ENCRYPTION_KEY), fresh_key(), fresh_key()
    values = plaintexts(Patient)
    for keys in ([a, *k0], [b, a], [a, b]):
        with override_settings(FIELD_ENCRYPTION_KEY=keys):
            rotate()
    with override_settings(FIELD_ENCRYPTION_KEY=[a]):
        check()
        assert plaintexts(Patient) == values


def test_it_drops_the_progress_of_an_abandoned_rotation_when_another_key_is_rotated_to(clinic):
    """K0 -> A stops halfway, the operator rotates to B instead, later back to A: the rows the
    first run had done are under B by then, and must not be skipped as "done for A"."""
    k0, a, b = list(settings.FIELD_ENCRYPTION_KEY), fresh_key(), fresh_key()
    values = plaintexts(Patient)
    pks = sorted(raw_tokens(Patient))
    notes_at = [f.name for f in encrypted_fields(Patient)].index("notes")
    saved = raw_tokens(Patient)[pks[3]][notes_at]
    Patient.objects.filter(pk=pks[3]).update(notes=Ciphertext("gAAAAA-not-a-fernet-token"))
    with override_settings(FIELD_ENCRYPTION_KEY=[a, *k0]), pytest.raises((InvalidToken, CiphertextError)):
        rotate("--batch-size", "2")
    Patient.objects.filter(pk=pks[3]).update(notes=Ciphertext(saved))

    for keys in ([b, a, *k0], [a, b]):
        with override_settings(FIELD_ENCRYPTION_KEY=keys):
            rotate("--batch-size", "2")
    with override_settings(FIELD_ENCRYPTION_KEY=[a]):
        check()
        assert plaintexts(Patient) == values


def test_it_keeps_the_canary_honest_when_only_blind_indexes_were_rebuilt(clinic):
    """A blind-index rebuild during a field-key rotation must not vouch for data it did not
    re-encrypt: dropping the old field key afterwards still fails start-up."""
    old, new, blind_key = list(settings.FIELD_ENCRYPTION_KEY), fresh_key(), os.urandom(32)
    with override_settings(FIELD_ENCRYPTION_KEY=[new, *old], BLIND_INDEX_KEY=blind_key):
        rotate("--blind-index")
    old_key_dropped = override_settings(FIELD_ENCRYPTION_KEY=[new], BLIND_INDEX_KEY=blind_key)
    with old_key_dropped, pytest.raises(SystemCheckError, match="FIELD_ENCRYPTION_KEY"):
        check()


def test_it_keeps_reporting_stale_blind_indexes_after_a_field_key_rotation(clinic):
    """Rotating the field key does not rebuild blind indexes, so it must not mark them current."""
    new = fresh_key()
    with override_settings(FIELD_ENCRYPTION_KEY=[new, *settings.FIELD_ENCRYPTION_KEY], BLIND_INDEX_KEY=os.urandom(32)):
        rotate()
        with pytest.raises(SystemCheckError, match="BLIND_INDEX_KEY"):
            check()


# --- Blind-index rebuild ----------------------------------------------------------------


def search(**criteria) -> set:
    with system_context("tests:search"):
        return {p.pk for p in patient_search(PatientQuery(**criteria))}


def test_it_rebuilds_blind_indexes_after_the_blind_index_key_changed(clinic):
    lefevre, martin, nguyen = clinic["patients"][:3]
    queries = [
        ({"last_name": "LEFEVRE"}, lefevre.pk),
        ({"last_name": "lefevre", "first_name": "anne marie"}, lefevre.pk),
        ({"phone": "06 11 11 11 11"}, martin.pk),
        ({"email": "PAUL@example.fr"}, martin.pk),
        ({"phone": "01 45 45 45 45"}, nguyen.pk),
        ({"last_name": "Nguyen", "birth_date": nguyen.birth_date}, nguyen.pk),
    ]
    for criteria, pk in queries:
        assert search(**criteria) == {pk}

    with override_settings(BLIND_INDEX_KEY=os.urandom(32)):
        with pytest.raises(SystemCheckError, match="BLIND_INDEX_KEY"):
            check()
        for criteria, _ in queries:
            assert search(**criteria) == set()

        output = rotate("--blind-index", "--batch-size", "4")
        assert f"blind-index: {len(PEOPLE)} rows done" in output

        for criteria, pk in queries:
            assert search(**criteria) == {pk}
        check()

    rebuild = AuditEvent.objects.filter(actor_username=ROTATOR)
    assert rebuild.filter(event_type=EventType.BLIND_INDEX_REBUILD, extra__stage="done").count() == 1
    reads = {e.patient_id: set(e.fields) for e in rebuild.filter(event_type=EventType.READ)}
    assert reads.keys() == {p.pk for p in clinic["patients"]}
    for fields in reads.values():
        assert fields == INDEXED_FIELDS  # what the indexes need, never the NIR, notes or address
    for event in rebuild.filter(event_type=EventType.READ):
        assert (event.actor_role, event.model_label) == ("system", "patients.Patient")


# --- A rotation killed mid-way (kill -9) ------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KILLED_AFTER = 5  # one-row batches committed before the kill (exactly, on PostgreSQL)
INDEX_COLUMNS = [f.column for f in Patient._meta.concrete_fields if f.column.startswith("bidx_")]


def _test_database_url() -> str:
    """The test database, for a `manage.py` run in another process."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    return f"postgres://{quote(db['USER'])}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _changed_rows(original: dict, columns: list[str]) -> set:
    """Patients whose stored columns are no longer the original ones."""
    now = raw_tokens(Patient, columns)
    return {pk for pk, row in original.items() if now[pk] != row}


def _wait_for(predicate, what: str, *, process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll the database (not a fixed sleep) until ``predicate`` holds, while the rotation runs."""

    def done() -> bool:
        if predicate():
            return True
        assert process.poll() is None, f"the rotation ended (exit {process.returncode}) before {what}"
        return False

    wait_until(done, what, timeout=timeout, interval=0.02)


@contextlib.contextmanager
def _row_held(pk):
    """On PostgreSQL, another connection holds one patient row locked: the rotation commits the
    batches before it and then waits, so the kill lands on a known batch. SQLite has one lock
    for the whole file: there the kill follows the poll, with many one-row batches still ahead."""
    if connection.vendor != "postgresql":
        yield
        return
    holder = connection.copy()
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SELECT 1 FROM patients_patient WHERE id = %s FOR UPDATE", [pk])
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("job", ["encrypt", "blind-index"])
def test_it_records_a_rotation_killed_mid_way_and_adds_up_the_runs_when_resumed(tmp_path, job):
    """`kill -9` after some batches: the trail shows what the killed run did (committed with the
    rows themselves: re-encrypted rows, or rebuilt indexes and the reads they took), and the
    event that ends the resumed rotation counts every row once, with each run's share."""
    for n in range(40):
        make_patient(last_name=f"Rotation{n:02d}", first_names="Kill", nir="")
    canary_write()
    values = plaintexts(Patient)
    rows = len(values)
    old, new_field_key, new_index_key = list(settings.FIELD_ENCRYPTION_KEY), fresh_key(), os.urandom(32)
    if job == "encrypt":
        event_type, args, columns = EventType.KEY_ROTATION, [], [f.column for f in encrypted_fields(Patient)]
        env = {"FIELD_ENCRYPTION_KEY": ",".join([new_field_key, *old])}
        new_keys = override_settings(FIELD_ENCRYPTION_KEY=[new_field_key, *old])
    else:
        event_type, args, columns = EventType.BLIND_INDEX_REBUILD, ["--blind-index"], INDEX_COLUMNS
        env = {"BLIND_INDEX_KEY": base64.urlsafe_b64encode(new_index_key).decode()}
        new_keys = override_settings(BLIND_INDEX_KEY=new_index_key)
    original = raw_tokens(Patient, columns)
    pks = sorted(original)  # rotation walks rows in primary-key order

    stderr = tmp_path / "rotate_keys.err"
    with _row_held(pks[KILLED_AFTER]), stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "rotate_keys", "--no-progress", "--batch-size", "1", *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, "DATABASE_URL": _test_database_url(), **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for(lambda: len(_changed_rows(original, columns)) >= KILLED_AFTER, "some batches", process=process)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr.read_text()

    # What the killed run did is in the trail, exactly: no more, no less than what it committed.
    killed = _changed_rows(original, columns)
    assert KILLED_AFTER <= len(killed) < rows
    if connection.vendor == "postgresql":
        assert len(killed) == KILLED_AFTER
    recorded = [e.extra for e in AuditEvent.objects.filter(event_type=event_type)]
    assert sum(extra.get("rows", 0) for extra in recorded) == len(killed), recorded
    assert not [extra for extra in recorded if extra.get("stage") == "done"]
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_username=ROTATOR)
    assert set(reads.values_list("patient_id", flat=True)) == (killed if job == "blind-index" else set())

    with new_keys:
        output = rotate("--batch-size", "1", *args)
    assert f"{job}: {rows - len(killed)} rows done under key" in output
    assert f"({rows} in all over 2 runs)" in output

    events = AuditEvent.objects.filter(event_type=event_type)
    assert {e.actor_username for e in events} == {ROTATOR}
    final = events.get(extra__stage="done").extra
    assert final["rows"] == rows
    assert [run["rows"] for run in final["runs"]] == [len(killed), rows - len(killed)]
    assert final["run"] == final["runs"][-1]["run"]
    if job == "blind-index":  # each patient's indexed fields read once over the two runs
        assert sorted(reads.values_list("patient_id", flat=True)) == pks

    with override_settings(FIELD_ENCRYPTION_KEY=[new_field_key]) if job == "encrypt" else new_keys:
        check()
        assert plaintexts(Patient) == values  # every row decrypts with the new key alone
        if job == "blind-index":
            for pk, patient in values.items():
                assert search(last_name=patient["last_name"]) == {pk}
