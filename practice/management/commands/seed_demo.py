"""Seed a demo clinic: five accounts, three practitioners, N patients, a few past visits.

`make run` calls it; `manage.py seed_demo --patients 100000` fills a database for benchmarks.

- Accounts: `secretary`, `doctor`, `doctor2`, `doctor3` and `admin` (staff, not superuser).
  Their password is DEMO_PASSWORD, or the published default below, which is printed once,
  when the accounts are created, and refused with DEBUG off: a known password must never
  open a production clinic. Existing accounts are left alone (password, groups, flags).
- Patients are topped up to N in all (archived ones count), never duplicated. They are
  fake: names, addresses and valid NIRs from Faker (fr_FR); e-mails on the reserved
  example.* domains so a demo never writes to a real person.
- Rows are inserted with bulk_create, which seals each value to its row like save() does;
  blind indexes are computed here because bulk_create skips Patient.save().
- Nothing is decrypted, so the command leaves no read rows: one audit event sums up the
  patients it created (a count, no values), one the appointments.
"""

import datetime
import os
import time
import unicodedata
from dataclasses import dataclass

import phonenumbers
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from faker import Faker
from faker.providers.ssn.fr_FR import Provider as FrenchSsnProvider
from tqdm import tqdm

from audit.commands import AuditedCommand
from audit.models import EventType
from audit.services import audit_event_write
from patients.models import Language, Patient, Sex
from patients.validators import nir_key
from practice.models import Practitioner, Specialty
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, roles_sync
from scheduling.models import Appointment, AppointmentStatus

# Documented in the README: the demo's only password unless DEMO_PASSWORD is set.
DEFAULT_PASSWORD = "cabinet-demo-2026"  # noqa: S105
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


def _residences() -> list[tuple[str, str]]:
    places = []
    for dept, _commune, _name, city in FrenchSsnProvider.departments_and_municipalities:
        if dept in _BIG_CITIES:
            first, count = _BIG_CITIES[dept]
            places += [(str(int(first) + n).zfill(5), city) for n in range(count)]
        elif len(dept) == 3:  # overseas: 971 -> 97100
            places.append((dept + "00", city))
        else:
            places.append((_CORSICA_POSTCODES.get(dept, dept + "000"), city))
    return places


RESIDENCES = _residences()
BIRTHPLACES = [dept + commune for dept, commune, _name, _city in FrenchSsnProvider.departments_and_municipalities]


class PatientFactory:
    """Builds unsaved fake patients. One random source (Faker's) so --seed reproduces a run."""

    def __init__(self, *, seed: int | None = None, today: datetime.date):
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
        postal_code, city = rng.choice(RESIDENCES)
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
        place = self.rng.choice(BORN_ABROAD) if self.rng.random() < 0.08 else self.rng.choice(BIRTHPLACES)
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
        started = time.monotonic()
        with transaction.atomic():
            groups = roles_sync()
            created_users = self._users_create(groups)
            practitioners = self._practitioners_create()
            created = self._patients_create(target=patients, seed=seed, disable_progress=no_progress)
            visits = self._visits_create(practitioners)
        elapsed = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo clinic ready in {elapsed:.1f} s: {User.objects.count()} users "
                f"({len(created_users)} created), {Practitioner.objects.count()} practitioners, "
                f"{Patient.objects.count()} patients ({created} created), {visits} past appointments created."
            )
        )

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

    def _practitioners_create(self) -> dict[str, Practitioner]:
        practitioners = {}
        for spec in PRACTITIONERS:
            specialty, _ = Specialty.objects.get_or_create(name=spec.specialty)
            practitioners[spec.username], _ = Practitioner.objects.get_or_create(
                user=User.objects.get(username=spec.username),
                defaults={"display_name": spec.display_name, "specialty": specialty, "colour": spec.colour},
            )
        return practitioners

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
        """A few past visits per demo practitioner, so each has patients of their own to open."""
        patient_ids = list(Patient.objects.order_by("created_at", "id").values_list("id", flat=True)[: VISITS_EACH * 2])
        if not patient_ids:
            return 0
        zone = timezone.get_current_timezone()
        today = timezone.localdate()
        created = 0
        for offset, (username, first_hour) in enumerate(VISITED_BY):
            practitioner = practitioners[username]
            if practitioner.appointments.exists():
                continue
            # The two practitioners share a few patients, as colleagues do.
            their_patients = patient_ids[offset * (VISITS_EACH - 2) :][:VISITS_EACH]
            for n, patient_id in enumerate(their_patients):
                day = today - datetime.timedelta(days=7 * (n + 1))  # one a week: never today, never overlapping
                day -= datetime.timedelta(days=max(0, day.weekday() - 4))  # a weekend day becomes Friday
                start = datetime.datetime.combine(day, datetime.time(first_hour + n % 3, 0), tzinfo=zone)
                Appointment.objects.create(
                    practitioner=practitioner,
                    patient_id=patient_id,
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
