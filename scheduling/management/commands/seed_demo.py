"""Seed a demo clinic: five accounts, three practitioners and their week, N patients, a few
past visits and a busy fortnight around today.

`make run` calls it; `manage.py seed_demo --patients 100000` fills a database for benchmarks.

- Accounts: `secretary`, `doctor`, `doctor2`, `doctor3` and `admin` (staff, not superuser).
  Their password is DEMO_PASSWORD, or the published default below, which is printed once,
  when the accounts are created, and refused with DEBUG off: a known password must never
  open a production clinic. Existing accounts are left alone (password, groups, flags).
- Each demo account without an authenticator gets one (a confirmed TOTP device named
  "demo"), whose secret and otpauth URI are printed once, when it is created; `demo_code`
  prints its current code. Accounts already enrolled are left alone.
- Patients are topped up to N in all (archived ones count), never duplicated. They are
  fake: names, addresses and valid NIRs from Faker (fr_FR); e-mails on the reserved
  example.* domains so a demo never writes to a real person. Faker is a demo requirement
  (requirements-demo.txt), not a production one: without it the command says what to
  install and does nothing.
- Rows are inserted with bulk_create, which seals each value to its row like save() does;
  blind indexes are computed here because bulk_create skips Patient.save().
- The practitioners get weekly working hours, the appointment types they offer and (one of
  them) a few days of holiday; each is created once and then left to the practice admin.
- The fortnight (7 days before today to 7 days after, in the practice's time zone) is
  filled to 70-85% of each working day: done, no-show and cancelled appointments in the
  past, today's as the clock says (done, in consultation, in the waiting room, booked), booked
  ones ahead. Times are computed per local day (DST-safe) and never overlap; they are
  inserted with bulk_create rather than one audited booking each. A day that already holds
  an appointment of a practitioner is left alone, so a re-run never double-books, and a
  run days later fills only the days that are new.
- Nothing is decrypted, so the command leaves no read rows: one audit event sums up the
  patients it created (a count, no values), one the past visits, one the fortnight.
"""

import base64
import datetime
import os
import random
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from tqdm import tqdm

from audit.management.audited import AuditedCommand
from audit.models import EventType
from audit.services import audit_event_write
from patients.models import Language, Patient, Sex
from patients.validators import nir_key
from practice.models import Practitioner, Specialty
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, roles_sync
from scheduling.availability import absences_between, hours_for_days, local_day_bounds, practice_tz, subtract
from scheduling.models import Absence, AbsenceKind, Appointment, AppointmentStatus, AppointmentType, WorkingHours

# Documented in the README: the demo's only password unless DEMO_PASSWORD is set.
DEFAULT_PASSWORD = "cabinet-demo-2026"  # noqa: S105
# The name of the authenticators made here; `demo_code` shows codes of these devices only.
DEMO_DEVICE = "demo"
BATCH_SIZE = 2000


@dataclass(frozen=True)
class DemoUser:
    username: str
    first_name: str
    last_name: str
    role: str
    is_staff: bool = False


@dataclass(frozen=True)
class DemoPractitioner:
    username: str
    display_name: str
    specialty: str
    colour: str


USERS = [
    DemoUser("secretary", "Sophie", "Laurent", SECRETARY),
    DemoUser("doctor", "Claire", "Martin", PRACTITIONER),
    DemoUser("doctor2", "Julien", "Bernard", PRACTITIONER),
    DemoUser("doctor3", "Amina", "Haddad", PRACTITIONER),
    DemoUser("admin", "Alain", "Girard", PRACTICE_ADMIN, is_staff=True),
]

PRACTITIONERS = [
    DemoPractitioner("doctor", "Dr Claire Martin", "Médecine générale", "#0b6bcb"),
    DemoPractitioner("doctor2", "Dr Julien Bernard", "Pédiatrie", "#2e7d32"),
    DemoPractitioner("doctor3", "Dr Amina Haddad", "Dermatologie", "#8e24aa"),
]


@dataclass(frozen=True)
class DemoType:
    name: str
    minutes: int
    colour: str
    mix: dict[str, int]  # who offers it, and how often they book it (relative weights)
    reasons: tuple[str, ...]


APPOINTMENT_TYPES = [
    DemoType(
        "Consultation",
        20,
        "#2563eb",
        {"doctor": 55, "doctor2": 35, "doctor3": 30},
        (
            "Fièvre",
            "Toux persistante",
            "Renouvellement d'ordonnance",
            "Certificat de sport",
            "Mal de dos",
            "Douleurs abdominales",
            "Angine",
            "Vertiges",
        ),
    ),
    DemoType(
        "Première consultation",
        30,
        "#d97706",
        {"doctor": 8, "doctor2": 8, "doctor3": 12},
        ("Nouveau patient", "Changement de médecin traitant", "Adressé par son médecin traitant"),
    ),
    DemoType(
        "Suivi",
        15,
        "#059669",
        {"doctor": 20, "doctor2": 10, "doctor3": 25},
        ("Suivi tension", "Résultats d'analyses", "Suivi diabète", "Contrôle après traitement"),
    ),
    DemoType(
        "Vaccination",
        10,
        "#dc2626",
        {"doctor": 12, "doctor2": 22},
        ("Vaccin grippe", "Rappel DTP", "ROR", "Vaccin HPV"),
    ),
    DemoType(
        "Pédiatrie bilan",
        40,
        "#db2777",
        {"doctor2": 25},
        ("Bilan 9 mois", "Bilan 24 mois", "Examen des 6 ans", "Bilan de croissance"),
    ),
    DemoType(
        "Dermatoscopie",
        30,
        "#7c3aed",
        {"doctor3": 30},
        ("Contrôle des grains de beauté", "Lésion suspecte", "Suivi de mélanome"),
    ),
]

INTERNAL_NOTES = ("Patient anxieux, prévoir du temps", "Apporter le carnet de santé", "Interprète : sa fille")
CANCELLATION_REASONS = ("Patient empêché", "Patient malade", "Reporté à la demande du patient", "Imprévu professionnel")

# Weekly hours, wall-clock in the practice's zone: (weekdays, start, end).
_WEEKDAYS = range(0, 5)
_t = datetime.time
WORKING_HOURS: dict[str, list[tuple[Sequence[int], datetime.time, datetime.time]]] = {
    "doctor": [(_WEEKDAYS, _t(8, 30), _t(12, 30)), (_WEEKDAYS, _t(14, 0), _t(18, 30))],
    "doctor2": [(_WEEKDAYS, _t(8, 30), _t(12, 30)), (_WEEKDAYS, _t(14, 0), _t(18, 30)), ([5], _t(9, 0), _t(12, 0))],
    "doctor3": [(_WEEKDAYS, _t(9, 0), _t(12, 30)), ([0, 1, 3, 4], _t(14, 0), _t(18, 0))],  # Wednesday afternoon off
}

# Who goes on holiday in the fortnight: from next Monday, for three days.
HOLIDAY = ("doctor3", 3, "Congés")

FORTNIGHT_DAYS = 7  # before and after today
BOOKED_SHARE = (0.70, 0.85)  # of each working day's time, drawn per practitioner and day
OWN_PATIENTS_SHARE = 0.85  # the rest are colleagues' patients
NO_SHOW_SHARE = 0.05
CANCELLED_SHARE = 0.06  # of booked slots: cancelled, then given to someone else
LATE_CANCELLED_SHARE = 0.12  # of free slots: cancelled too late to give away
REASON_SHARE = 0.55
NOTE_SHARE = 0.06
FORCED_SHARE = 0.1  # days with one patient squeezed in after the morning

# Practitioners given past visits, so that "their" patients exist: (username, first hour).
VISITED_BY = [("doctor", 9), ("doctor2", 14)]
VISITS_EACH = 5

# Age bands (years, inclusive) and their weights: roughly a general practice's patients.
AGE_BANDS = [((0, 14), 17), ((15, 29), 16), ((30, 44), 18), ((45, 59), 19), ((60, 74), 18), ((75, 99), 12)]

# Birthplaces outside France: the NIR holds 99 and the INSEE country code.
BORN_ABROAD = ["99350", "99352", "99351", "99139", "99127", "99134", "99109", "99132"]

# Where patients live: each prefecture in Faker's French list, with its postal code.
_BIG_CITIES = {"75": ("75001", 20), "13": ("13001", 16), "69": ("69001", 9)}  # arrondissements
_CORSICA_POSTCODES = {"2A": "20000", "2B": "20200"}  # Ajaccio, Bastia


def _faker():
    """Faker and its French NIR provider, or a CommandError saying what to install.

    Imported here rather than at the top: Faker is not in the production requirements, and
    `demo_code` imports this module (for the accounts) without needing it."""
    try:
        # Faker is a demo extra (requirements-demo.txt), not a production dependency.
        from faker import Faker  # noqa: PLC0415
        from faker.providers.ssn.fr_FR import Provider as FrenchSsnProvider  # noqa: PLC0415
    except ImportError as error:
        raise CommandError(
            "seed_demo needs Faker, a demo requirement that production does not install: "
            "`pip install -r requirements-demo.txt` (`make install` does it)."
        ) from error
    return Faker, FrenchSsnProvider


def _residences(municipalities) -> list[tuple[str, str]]:
    places = []
    for dept, _commune, _name, city in municipalities:
        if dept in _BIG_CITIES:
            first, count = _BIG_CITIES[dept]
            places += [(str(int(first) + n).zfill(5), city) for n in range(count)]
        elif len(dept) == 3:  # overseas: 971 -> 97100
            places.append((dept + "00", city))
        else:
            places.append((_CORSICA_POSTCODES.get(dept, dept + "000"), city))
    return places


class PatientFactory:
    """Builds unsaved fake patients. One random source (Faker's) so --seed reproduces a run."""

    def __init__(self, *, seed: int | None = None, today: datetime.date):
        Faker, FrenchSsnProvider = _faker()
        municipalities = FrenchSsnProvider.departments_and_municipalities
        self.residences = _residences(municipalities)
        self.birthplaces = [dept + commune for dept, commune, _name, _city in municipalities]
        self.fake = Faker("fr_FR")
        if seed is not None:
            self.fake.seed_instance(seed)
        self.rng = self.fake.random
        self.today = today

    def build(self) -> Patient:
        rng = self.rng
        sex = rng.choice([Sex.FEMALE, Sex.MALE])  # the NIR's first digit only knows 1 and 2
        birth_date = self._birth_date()
        age = (self.today - birth_date).days // 365
        first_names = self._first_names(sex)
        last_name = self.fake.last_name()
        birth_name = ""
        if sex == Sex.FEMALE and age >= 25 and rng.random() < 0.4:
            # Married name in use, birth name kept (as on the carte Vitale).
            birth_name, last_name = last_name, self.fake.last_name()
        email = self._email(first_names, last_name) if rng.random() < 0.8 else ""
        postal_code, city = rng.choice(self.residences)
        patient = Patient(
            last_name=last_name,
            birth_name=birth_name,
            first_names=first_names,
            sex=sex,
            birth_date=birth_date,
            phone_mobile=self._phone(rng.choice([6, 7])),
            phone_other=self._phone(rng.randint(1, 5)) if rng.random() < 0.15 else "",
            email=email,
            address=self.fake.street_address(),
            postal_code=postal_code,
            city=city,
            nir=self._nir(sex, birth_date),
            referring_doctor=f"Dr {self.fake.first_name()} {self.fake.last_name()}" if rng.random() < 0.35 else "",
            notes="",
            language=Language.FRENCH if rng.random() < 0.95 else Language.ENGLISH,
            consent_sms=rng.random() < 0.85,
            consent_email=bool(email) and rng.random() < 0.6,
        )
        return patient

    def _birth_date(self) -> datetime.date:
        (low, high), _weight = self.rng.choices(AGE_BANDS, weights=[w for _band, w in AGE_BANDS])[0]
        oldest = int((high + 1) * 365.25) - 1
        youngest = max(1, int(low * 365.25))
        return self.today - datetime.timedelta(days=self.rng.randint(youngest, oldest))

    def _first_names(self, sex: str) -> str:
        pick = self.fake.first_name_female if sex == Sex.FEMALE else self.fake.first_name_male
        first = pick()
        if self.rng.random() < 0.12:
            second = pick()
            if second != first and "-" not in first + second:
                first = f"{first}-{second}"  # Jean-Pierre, Marie-Claire
        return first

    def _email(self, first_names: str, last_name: str) -> str:
        def ascii_part(text: str) -> str:
            folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
            return "".join(c for c in folded if c.isalnum() or c in ".-")

        local = f"{ascii_part(first_names)}.{ascii_part(last_name.replace(' ', '-'))}".strip(".-")
        if self.rng.random() < 0.3:
            local += str(self.rng.randint(1, 99))
        # Reserved domains (RFC 2606): a demo never e-mails a real address.
        return f"{local}@{self.fake.safe_domain_name()}"

    def _phone(self, first_digit: int) -> str:
        """A French number valid for `phonenumbers`, in E.164 (6/7: mobiles, 1-5: landlines)."""
        while True:
            national = first_digit * 10**8 + self.rng.randint(0, 99_999_999)
            if phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=33, national_number=national)):
                return f"+33{national}"

    def _nir(self, sex: str, birth_date: datetime.date) -> str:
        """Sex, year and month of birth, birthplace (INSEE code), order number, key."""
        place = self.rng.choice(BORN_ABROAD) if self.rng.random() < 0.08 else self.rng.choice(self.birthplaces)
        body = (
            f"{1 if sex == Sex.MALE else 2}{birth_date.year % 100:02d}{birth_date.month:02d}"
            f"{place}{self.rng.randint(1, 999):03d}"
        )
        return body + nir_key(body)


class Command(AuditedCommand):
    help = "Create the demo accounts, practitioners and fake patients (tops up to --patients)."

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=200, help="patients wanted in all (default 200)")
        parser.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible run")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, patients, seed, no_progress, **options):
        if patients < 0:
            raise CommandError("--patients must be 0 or more.")
        _faker()  # before anything is written
        started = time.monotonic()
        with transaction.atomic():
            groups = roles_sync()
            created_users = self._users_create(groups)
            practitioners = self._practitioners_create()
            self._working_hours_create(practitioners)
            self._appointment_types_create(practitioners)
            created = self._patients_create(target=patients, seed=seed, disable_progress=no_progress)
            visits = self._visits_create(practitioners)
            self._holiday_create(practitioners)
            fortnight = Fortnight(practitioners, rng=random.Random(seed)).fill()
            devices = self._devices_create()
        elapsed = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo clinic ready in {elapsed:.1f} s: {User.objects.count()} users "
                f"({len(created_users)} created), {Practitioner.objects.count()} practitioners, "
                f"{Patient.objects.count()} patients ({created} created), {visits} past appointments and "
                f"{fortnight} appointments around today created."
            )
        )
        self._devices_print(devices)

    def _password(self, missing: list[DemoUser]) -> str:
        password = os.environ.get("DEMO_PASSWORD", "")
        if not password and not settings.DEBUG:
            raise CommandError(
                "Refusing to create demo accounts with the published default password while DEBUG is off: "
                "set DEMO_PASSWORD."
            )
        password = password or DEFAULT_PASSWORD
        for spec in missing:
            try:
                validate_password(
                    password, User(username=spec.username, first_name=spec.first_name, last_name=spec.last_name)
                )
            except ValidationError as error:
                reasons = " ".join(error.messages)
                raise CommandError(f"DEMO_PASSWORD is refused for {spec.username}: {reasons}") from None
        return password

    def _users_create(self, groups) -> list[User]:
        existing = set(User.objects.filter(username__in=[u.username for u in USERS]).values_list("username", flat=True))
        missing = [spec for spec in USERS if spec.username not in existing]
        if not missing:
            return []
        password = self._password(missing)
        created = []
        for spec in missing:
            user = User.objects.create_user(
                username=spec.username,
                password=password,
                first_name=spec.first_name,
                last_name=spec.last_name,
                email=f"{spec.username}@cabinet.example",
                is_staff=spec.is_staff,
            )
            user.groups.add(groups[spec.role])
            created.append(user)
        names = ", ".join(user.username for user in created)
        if password == DEFAULT_PASSWORD:
            self.stdout.write(f"Created {names} with the demo password: {DEFAULT_PASSWORD}")
        else:
            self.stdout.write(f"Created {names} with the password from DEMO_PASSWORD.")
        return created

    def _devices_create(self) -> dict[str, TOTPDevice | None]:
        """An authenticator for each demo account that has none: username -> the new device,
        or None for an account already enrolled (its own authenticator, or an earlier run's)."""
        users = User.objects.filter(username__in=[spec.username for spec in USERS]).order_by("pk")
        enrolled = set(TOTPDevice.objects.filter(user__in=users, confirmed=True).values_list("user_id", flat=True))
        devices: dict[str, TOTPDevice | None] = {}
        for user in users:
            if user.pk in enrolled:
                devices[user.username] = None
                continue
            devices[user.username] = TOTPDevice.objects.create(user=user, name=DEMO_DEVICE, confirmed=True)
            audit_event_write(
                event_type=EventType.OTP_ENROLLED,
                model_label=User._meta.label,
                object_pk=user.pk,
                extra={"username": user.username, "device": DEMO_DEVICE},
            )
        return devices

    def _devices_print(self, devices: dict[str, TOTPDevice | None]) -> None:
        already = [username for username, device in devices.items() if device is None]
        if already:
            self.stdout.write(f"Second factor already enrolled: {', '.join(already)}.")
        for username, device in devices.items():
            if device is not None:
                secret = base64.b32encode(device.bin_key).decode()
                self.stdout.write(f"{username}: TOTP secret {secret}\n    {device.config_url}")
        if len(already) < len(devices):
            self.stdout.write(
                "Second factor: add a secret to an authenticator app (or scan its otpauth URI as a QR code), "
                "or print the current code with `manage.py demo_code <username>`."
            )

    def _practitioners_create(self) -> dict[str, Practitioner]:
        practitioners = {}
        for spec in PRACTITIONERS:
            specialty, _ = Specialty.objects.get_or_create(name=spec.specialty)
            practitioners[spec.username], _ = Practitioner.objects.get_or_create(
                user=User.objects.get(username=spec.username),
                defaults={"display_name": spec.display_name, "specialty": specialty, "colour": spec.colour},
            )
        return practitioners

    def _working_hours_create(self, practitioners: dict[str, Practitioner]) -> None:
        """A week for each demo practitioner who has none yet (then it is the admin's)."""
        have_hours = set(WorkingHours.objects.values_list("practitioner_id", flat=True).distinct())
        rows = [
            WorkingHours(practitioner=practitioners[username], weekday=weekday, start_time=start, end_time=end)
            for username, ranges in WORKING_HOURS.items()
            if practitioners[username].pk not in have_hours
            for weekdays, start, end in ranges
            for weekday in weekdays
        ]
        WorkingHours.objects.bulk_create(rows)

    def _appointment_types_create(self, practitioners: dict[str, Practitioner]) -> None:
        """The types, offered by the practitioners of their mix, once: later changes are the admin's."""
        existing = set(AppointmentType.objects.values_list("name", flat=True))
        for spec in APPOINTMENT_TYPES:
            if spec.name in existing:
                continue
            appointment_type = AppointmentType.objects.create(
                name=spec.name, duration_minutes=spec.minutes, colour=spec.colour
            )
            appointment_type.practitioners.set([practitioners[username] for username in spec.mix])

    def _holiday_create(self, practitioners: dict[str, Practitioner]) -> None:
        """A few days off for one practitioner, from next Monday, unless the fortnight has some."""
        username, days, label = HOLIDAY
        practitioner = practitioners[username]
        today = timezone.now().astimezone(practice_tz()).date()
        window = _window(today)
        if Absence.objects.filter(practitioner=practitioner, start__lt=window[1], end__gt=window[0]).exists():
            return
        monday = today + datetime.timedelta(days=7 - today.weekday())
        start, _ = local_day_bounds(monday)
        _, end = local_day_bounds(monday + datetime.timedelta(days=days - 1))
        if practitioner.appointments.filter(start__lt=end, end__gt=start).exists():
            return  # booked already: a holiday there would strand patients
        Absence.objects.create(practitioner=practitioner, start=start, end=end, kind=AbsenceKind.HOLIDAY, label=label)

    def _patients_create(self, *, target: int, seed: int | None, disable_progress: bool) -> int:
        missing = target - Patient.objects.count()
        if missing <= 0:
            return 0
        factory = PatientFactory(seed=seed, today=timezone.localdate())
        # tqdm redraws a line with "\r": the command's OutputWrapper would add a newline to each redraw.
        with tqdm(total=missing, unit="patient", file=self.stderr._out, disable=disable_progress) as bar:
            done = 0
            while done < missing:
                batch = [factory.build() for _ in range(min(BATCH_SIZE, missing - done))]
                for patient in batch:
                    patient.blind_indexes_update()  # save() would; bulk_create does not
                Patient.objects.bulk_create(batch, batch_size=BATCH_SIZE)
                done += len(batch)
                bar.update(len(batch))
        audit_event_write(event_type=EventType.CREATE, model_label=Patient._meta.label, extra={"seeded": missing})
        return missing

    def _visits_create(self, practitioners: dict[str, Practitioner]) -> int:
        """A few past visits per demo practitioner before the fortnight, so each has patients of
        their own to open (the same ones on every run)."""
        patient_ids = list(Patient.objects.order_by("created_at", "id").values_list("id", flat=True)[: VISITS_EACH * 2])
        if not patient_ids:
            return 0
        zone = practice_tz()
        today = timezone.now().astimezone(zone).date()
        consultation = AppointmentType.objects.filter(name="Consultation").first()
        created = 0
        for offset, (username, first_hour) in enumerate(VISITED_BY):
            practitioner = practitioners[username]
            if practitioner.appointments.exists():
                continue
            # The two practitioners share a few patients, as colleagues do.
            their_patients = patient_ids[offset * (VISITS_EACH - 2) :][:VISITS_EACH]
            for n, patient_id in enumerate(their_patients):
                # One a week before the fortnight, never overlapping; a weekend day becomes Friday.
                day = today - datetime.timedelta(days=7 * (n + 1) + FORTNIGHT_DAYS)
                day -= datetime.timedelta(days=max(0, day.weekday() - 4))
                start = datetime.datetime.combine(day, datetime.time(first_hour + n % 3, 0), tzinfo=zone)
                Appointment.objects.create(
                    practitioner=practitioner,
                    patient_id=patient_id,
                    appointment_type=consultation,
                    start=start,
                    end=start + datetime.timedelta(minutes=20),
                    status=AppointmentStatus.DONE,
                )
                created += 1
        if created:
            audit_event_write(
                event_type=EventType.CREATE, model_label=Appointment._meta.label, extra={"seeded": created}
            )
        return created


def _window(today: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    """The fortnight around `today`: from the start of its first local day to the end of its last."""
    start, _ = local_day_bounds(today - datetime.timedelta(days=FORTNIGHT_DAYS))
    _, end = local_day_bounds(today + datetime.timedelta(days=FORTNIGHT_DAYS))
    return start, end


def _minutes(low: float, high: float, rng: random.Random) -> datetime.timedelta:
    return datetime.timedelta(minutes=round(rng.uniform(low, high)))


class Fortnight:
    """Fills the fortnight around today with appointments, computed here and inserted in bulk.

    Slots are laid end to end through each free range of a working day (working hours minus
    absences), each booked or left free so that the day ends near its drawn share. Every slot
    fits in its range, so active appointments never overlap and lie within working hours (the
    few squeezed in after the morning are marked forced, as a secretary's override would be);
    cancelled ones may share a slot with the booking that replaced them, as they do in life.
    """

    def __init__(self, practitioners: dict[str, Practitioner], *, rng: random.Random):
        self.practitioners = list(practitioners.values())
        self.rng = rng
        self.zone = practice_tz()
        self.now = timezone.now()
        self.today = self.now.astimezone(self.zone).date()
        self.rows: list[Appointment] = []
        self.seen: set = set()  # patients already booked on the day being filled
        self.front_desk = User.objects.filter(username="secretary").first()

    def fill(self) -> int:
        ids = [p.pk for p in self.practitioners]
        patients = list(Patient.objects.filter(is_archived=False).order_by("id").values_list("id", flat=True))
        if not patients or not ids:
            return 0
        # Each patient has a practitioner of their own (by position in id order), so that
        # a practitioner's patient list is theirs rather than the whole clinic's.
        self.own = {pk: patients[n :: len(ids)] or patients for n, pk in enumerate(ids)}
        self.patients = patients
        first = self.today - datetime.timedelta(days=FORTNIGHT_DAYS)
        last = self.today + datetime.timedelta(days=FORTNIGHT_DAYS)
        window_start, window_end = _window(self.today)
        taken = {
            (practitioner_id, start.astimezone(self.zone).date())
            for practitioner_id, start in Appointment.objects.filter(
                practitioner_id__in=ids, start__lt=window_end, end__gt=window_start
            ).values_list("practitioner_id", "start")
        }
        hours = hours_for_days(ids, first, last)
        absences = list(absences_between(ids, window_start, window_end))
        self.types = self._types(ids)
        day = first
        while day <= last:
            self.seen = set()  # a patient comes once a day, as long as there are enough of them
            for practitioner in self.practitioners:
                ranges = hours.get((practitioner.pk, day), [])
                if (practitioner.pk, day) in taken or not ranges or not self.types.get(practitioner.pk):
                    continue
                away = [(a.start, a.end) for a in absences if a.practitioner_id in (None, practitioner.pk)]
                self._day_fill(practitioner, ranges, away)
            day += datetime.timedelta(days=1)
        if not self.rows:
            return 0
        Appointment.objects.bulk_create(self.rows, batch_size=BATCH_SIZE)
        # created_at is set on insert (auto_now_add): say when the front desk booked them.
        for row in self.rows:
            row.created_at = min(row.start - datetime.timedelta(days=self.rng.randint(2, 20)), self.now)
        Appointment.objects.bulk_update(self.rows, ["created_at"], batch_size=BATCH_SIZE)
        audit_event_write(
            event_type=EventType.CREATE,
            model_label=Appointment._meta.label,
            extra={"seeded": len(self.rows), "from": first.isoformat(), "to": last.isoformat()},
        )
        return len(self.rows)

    def _types(self, ids) -> dict[int, list[tuple[AppointmentType, int, tuple[str, ...]]]]:
        """Per practitioner: the active types they offer, with their weight and reasons."""
        specs = {spec.name: spec for spec in APPOINTMENT_TYPES}
        usernames = {p.pk: p.user.username for p in Practitioner.objects.filter(pk__in=ids).select_related("user")}
        offered: dict[int, list] = {}
        for appointment_type in AppointmentType.objects.filter(is_active=True).prefetch_related("practitioners"):
            spec = specs.get(appointment_type.name)
            for practitioner in appointment_type.practitioners.all():
                if practitioner.pk not in usernames:
                    continue
                weight = spec.mix.get(usernames[practitioner.pk], 5) if spec else 5
                offered.setdefault(practitioner.pk, []).append((appointment_type, weight, spec.reasons if spec else ()))
        return offered

    def _day_fill(self, practitioner: Practitioner, ranges, away) -> None:
        rng = self.rng
        share = rng.uniform(*BOOKED_SHARE)
        # Each slot is booked with probability `share` when the day is on target, more often
        # behind it, less often ahead: even a short Saturday morning ends near its share.
        elapsed = booked = datetime.timedelta()
        free = subtract(ranges, away)
        for n, (range_start, range_end) in enumerate(free):
            # In UTC: adding minutes to a local time would be wall-clock arithmetic.
            moment, range_end = range_start.astimezone(datetime.UTC), range_end.astimezone(datetime.UTC)
            while True:
                fitting = [t for t in self.types[practitioner.pk] if moment + _duration(t[0]) <= range_end]
                if not fitting:
                    break
                choice = rng.choices(fitting, weights=[weight for _type, weight, _reasons in fitting])[0]
                length = _duration(choice[0])
                end = moment + length
                elapsed += length
                if booked + length <= share * elapsed + rng.random() * length:
                    booked += length
                    self._add(practitioner, choice, moment, end)
                    if rng.random() < CANCELLED_SHARE:
                        self._add(practitioner, choice, moment, end, cancelled=True)
                elif rng.random() < LATE_CANCELLED_SHARE:
                    self._add(practitioner, choice, moment, end, cancelled=True)
                moment = end
            if n == 0 and rng.random() < FORCED_SHARE:
                self._squeeze_in(practitioner, range_end, next_start=free[1][0] if len(free) > 1 else None, away=away)

    def _squeeze_in(self, practitioner, start, *, next_start, away) -> None:
        """One patient seen when the morning is over: outside working hours, so forced."""
        choice = min(self.types[practitioner.pk], key=lambda t: t[0].duration_minutes)
        end = start + _duration(choice[0])
        if (next_start is not None and end > next_start) or any(a < end and start < b for a, b in away):
            return
        self._add(practitioner, choice, start, end, forced=True)

    def _add(self, practitioner, choice, start, end, *, cancelled=False, forced=False) -> None:
        rng = self.rng
        appointment_type, _weight, reasons = choice
        row = Appointment(
            practitioner=practitioner,
            patient_id=self._patient(practitioner.pk),
            appointment_type=appointment_type,
            start=start,
            end=end,
            reason=rng.choice(reasons) if reasons and rng.random() < REASON_SHARE else "",
            internal_note=rng.choice(INTERNAL_NOTES) if rng.random() < NOTE_SHARE else "",
            forced=forced,
            created_by=self.front_desk,
            updated_by=self.front_desk,
        )
        if cancelled:
            row.status = AppointmentStatus.CANCELLED
            row.cancelled_at = min(start - _minutes(60, 3 * 24 * 60, rng), self.now)
            row.cancelled_by = self.front_desk
            row.cancellation_reason = rng.choice(CANCELLATION_REASONS)
        else:
            self._status_set(row)
        self.rows.append(row)

    def _status_set(self, row: Appointment) -> None:
        """What the clock says: over (done or no-show), under way, in the waiting room, or to come."""
        rng, now = self.rng, self.now
        if row.end <= now:
            if rng.random() < NO_SHOW_SHARE:
                row.status = AppointmentStatus.NO_SHOW
                return
            row.status = AppointmentStatus.DONE
            row.arrived_at = row.start - _minutes(2, 15, rng)
            row.consultation_started_at = row.start + _minutes(0, 8, rng)
            done = row.consultation_started_at + (row.end - row.start) + _minutes(-3, 5, rng)
            row.done_at = max(min(done, now), row.consultation_started_at + datetime.timedelta(minutes=1))
        elif row.start <= now:
            row.status = AppointmentStatus.IN_CONSULTATION
            row.arrived_at = row.start - _minutes(2, 15, rng)
            row.consultation_started_at = min(row.start + _minutes(0, 5, rng), now)
        elif row.start - now <= datetime.timedelta(minutes=30) and rng.random() < 0.75:
            row.status = AppointmentStatus.ARRIVED
            row.arrived_at = max(now - _minutes(0, 12, rng), row.start - datetime.timedelta(minutes=40))

    def _patient(self, practitioner_id):
        pool = self.own[practitioner_id] if self.rng.random() < OWN_PATIENTS_SHARE else self.patients
        for _attempt in range(6):
            patient_id = self.rng.choice(pool)
            if patient_id not in self.seen:
                break
        self.seen.add(patient_id)
        return patient_id


def _duration(appointment_type: AppointmentType) -> datetime.timedelta:
    return datetime.timedelta(minutes=appointment_type.duration_minutes)
