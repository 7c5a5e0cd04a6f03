"""Deterministic generation of a fake Alyx colony (see :meth:`Colony.generate`).

Everything random comes from one ``random.Random`` seeded from the colony's seed, and records are
created in a fixed order, so the same arguments always produce the same ids, nicknames, dates
and weights. Features the sync engine must cope with are placed by position, not by chance, so
even a small colony has them: duplicate nicknames across labs, dead subjects, open and closed
water restrictions, implants, genotypes and rename history.

It is written for speed (20,000 subjects with 100,000 sessions and 200,000 weighings in a few
seconds): datetimes are formatted from precomputed day strings rather than built as objects.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from limsync.testing.alyx.models import (
    Lab,
    Location,
    Procedure,
    Project,
    Session,
    Subject,
    Surgery,
    User,
    WaterAdministration,
    WaterRestriction,
    WaterType,
    Weighing,
)
from limsync.testing.alyx.store import new_id

if TYPE_CHECKING:
    import random

    from limsync.testing.alyx.store import Store

_LABS = [
    ("testlab", "Test Institute", "1 Loopback Rd", "Europe/London"),
    ("otherlab", "Other", "", "America/New_York"),
    ("cortexlab", "", "", "GB"),
]
_USERS = ["admin", "alice", "bob", "carol", "dave", "erin", "frank", "grace"]
_PROCEDURES = [
    ("Behavior training/tasks", "Training on a behavioural task."),
    ("Headplate implant", "Implantation of a head plate under anaesthesia."),
    ("Craniotomy", "Opening of the skull over the recording site."),
    ("Water restriction", "Controlled access to drinking water."),
    ("Corrective procedure", "Correction of an earlier procedure."),
    ("UV cement", "Exposure to ultraviolet light to cure cement."),
    ("Perfusion", "Terminal perfusion."),
]
_WATER_TYPES = [
    "Water",
    "Water 15% Sucrose",
    "Hydrogel 5% Citric Acid",
    "Water 10% Sucrose",
    "Water 2% Citric Acid",
    "Hydrogel",
    "Water 1% Citric Acid",
]
_PROTOCOLS = [
    "_iblrig_tasks_trainingChoiceWorld6.4.2",
    "_iblrig_tasks_biasedChoiceWorld6.4.2",
    "habituation",
    "test_protocol_v1",
]
_QC = ["NOT_SET"] * 5 + ["PASS", "PASS", "WARNING", "FAIL", "CRITICAL"]
_STRAINS = [None, "C57BL/6J", "B6.129"]
_LINES = [None, "Ai95", "PV-Cre"]
_SOURCES = [None, "Charles River", "Jax"]
_ALLELES = [("Ai95", "+/-"), ("PV-Cre", "+/+"), ("Thy1-GCaMP6s", "+/-")]
_SEXES = "MMMFFFU"


def _name(options: list[str], i: int, fallback: str) -> str:
    return options[i] if i < len(options) else f"{fallback}{i:02d}"


class _Days:
    """``YYYY-MM-DD`` strings for day offsets from a reference date, computed once each."""

    def __init__(self, origin: date) -> None:
        self.origin = origin
        self._cache: dict[int, str] = {}

    def __call__(self, offset: int) -> str:
        text = self._cache.get(offset)
        if text is None:
            text = (self.origin + timedelta(days=offset)).isoformat()
            self._cache[offset] = text
        return text


def _stamp(day: str, seconds: int, micro: int = 0) -> str:
    """A naive ISO datetime on ``day``; ``seconds`` past midnight (< 86400)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{day}T{h:02d}:{m:02d}:{s:02d}" + (f".{micro:06d}" if micro else "")


def populate(
    colony: Store,
    *,
    n_labs: int,
    n_users: int,
    n_projects: int,
    n_subjects: int,
    sessions_per_subject: int,
    weighings_per_subject: int,
    water_admins_per_subject: int,
) -> None:
    """Fill an empty ``colony`` that no other thread uses yet."""
    if n_labs < 1 or n_users < 1:
        raise ValueError("a colony needs at least one lab and one user")
    rng = colony.rng
    rnd = rng.random  # int(rnd() * n) is several times faster than randrange(n)
    labs = []
    for i in range(n_labs):
        name, institution, address, tz = (
            _LABS[i] if i < len(_LABS) else (f"lab{i:02d}", "", "", "GB")
        )
        lab = Lab(new_id(rng), name, institution, address, tz)
        labs.append(lab)
        colony.insert("lab", lab)
    rigs: list[str] = []
    rooms: list[str] = []
    for lab in labs:
        for suffix, bucket in (("rig1", rigs), ("surgery_room", rooms)):
            location = Location(new_id(rng), f"{lab.name}_{suffix}", lab.id)
            bucket.append(location.id)
            colony.insert("location", location)
    users = []
    for i in range(n_users):
        username = _name(_USERS, i, "user")
        user = User(
            new_id(rng),
            username,
            email=f"{username}@example.com",
            labs=(labs[i % n_labs].id,),
            is_stock_manager=(i == 1),
        )
        users.append(user)
        colony.insert("user", user)
    projects = []
    for i in range(n_projects):
        name = f"proj_{chr(ord('a') + i)}" if i < 26 else f"proj_{i:02d}"
        members = tuple(u.id for j, u in enumerate(users) if j == 0 or (i + j) % 2 == 1)
        project = Project(new_id(rng), name, f"Project {name[5:].upper()}", members)
        projects.append(project)
        colony.insert("project", project)
    procedures = {}
    for name, description in _PROCEDURES:
        procedure = Procedure(new_id(rng), name, description)
        procedures[name] = procedure.id
        colony.insert("procedure", procedure)
    water_types = []
    for name in _WATER_TYPES:
        water_type = WaterType(new_id(rng), name)
        water_types.append(water_type.id)
        colony.insert("watertype", water_type)

    today = colony.today
    days = _Days(today)
    width = max(3, len(str(n_subjects)))
    # Shared tuples keep a 100k-session colony small: most sessions have the same few values.
    tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
    behaviour = (procedures["Behavior training/tasks"],)
    surgery_procs = (procedures["Headplate implant"], procedures["Craniotomy"])
    user_ids = [u.id for u in users]
    previous = ("", 0)  # nickname and user index of the last subject
    for i in range(n_subjects):
        lab_i = i % n_labs
        user_i = int(rnd() * n_users)
        nickname = f"SUBJ{i + 1:0{width}d}"
        if i % 25 == 24 and n_labs > 1 and n_users > 1:
            # Nicknames are unique per lab and per responsible user only (cortex-lab/alyx#1032).
            nickname, user_i = previous[0], (previous[1] + 1) % n_users
        age = 60 + int(rnd() * 540)
        birth = -age
        death = birth + 45 + int(rnd() * (age - 45)) if i % 9 == 0 else None
        member_of = tuple(p.id for p in projects if rnd() < 0.5)
        subject = Subject(
            id=new_id(rng),
            nickname=nickname,
            lab=labs[lab_i].id,
            responsible_user=users[user_i].id,
            birth_date=days(birth),
            death_date=days(death) if death is not None else None,
            sex=_SEXES[int(rnd() * len(_SEXES))],
            strain=_STRAINS[int(rnd() * 3)],
            line=_LINES[int(rnd() * 3)],
            source=_SOURCES[int(rnd() * 3)],
            projects=tuples.setdefault(member_of, member_of),
            genotype=tuple(_ALLELES[: 1 + int(rnd() * 2)]) if i % 5 == 2 else (),
            description="first mouse" if i == 0 else "",
        )
        if i % 20 == 3:
            renamed = _stamp(days(birth + 30), 36000 + int(rnd() * 3600), 1 + int(rnd() * 999_999))
            old = {"date_time": renamed, "value": f"TMP{i + 1:0{width}d}"}
            subject.json = {"history": {"nickname": [old]}}
        colony.insert("subject", subject)
        previous = (nickname, user_i)
        _actions(
            colony,
            rng,
            subject,
            i,
            days,
            end=death if death is not None else -1,  # the living: activity until yesterday
            birth=birth,
            tuples=tuples,
            users=user_ids,
            water_types=water_types,
            rig=rigs[lab_i],
            room=rooms[lab_i],
            behaviour=behaviour,
            surgery_procs=surgery_procs,
            counts=(sessions_per_subject, weighings_per_subject, water_admins_per_subject),
        )


def _actions(
    colony: Store,
    rng: random.Random,
    subject: Subject,
    i: int,
    days: _Days,
    *,
    end: int,
    birth: int,
    tuples: dict[tuple[str, ...], tuple[str, ...]],
    users: list[str],
    water_types: list[str],
    rig: str,
    room: str,
    behaviour: tuple[str, ...],
    surgery_procs: tuple[str, ...],
    counts: tuple[int, int, int],
) -> None:
    """A subject's surgeries, sessions, weighings, water restrictions and administrations,
    all dated between its eighth week and its death (or yesterday)."""
    rnd = rng.random
    n_sessions, n_weighings, n_admins = counts
    start = min(birth + 56, end)
    span = end - start + 1
    implant = 0.0
    if i % 3 == 0:
        implant = round(0.8 + rnd() * 0.8, 1)
        colony.insert(
            "surgery",
            Surgery(
                id=new_id(rng),
                subject=subject.id,
                start_time=_stamp(days(max(birth, start - 7)), 36000),
                end_time=_stamp(days(max(birth, start - 7)), 39600),
                narrative="headplate implant",
                outcome_type="r",
                implant_weight=implant,
                lab=subject.lab,
                location=room if i % 2 == 0 else None,
                users=(subject.responsible_user,),
                procedures=surgery_procs,
            ),
        )
    base_weight = 25.0 if subject.sex == "M" else 21.5
    sessions: list[Session] = []
    per_day: dict[int, int] = {}
    for offset in sorted(int(rnd() * span) for _ in range(n_sessions)):
        day = start + offset
        number = per_day[day] = per_day.get(day, 0) + 1
        begin = 28800 + int(rnd() * 36000)
        duration = 1800 + int(rnd() * 3600)
        # last edited the evening after the session or up to two days later, never after
        # yesterday (sessions end by then), so every stamp lies before the colony's clock
        modified = _stamp(
            days(min(day + int(rnd() * 3), -1)),
            72000 + int(rnd() * 14000),
            int(rnd() * 1_000_000) if rnd() < 0.8 else 0,
        )
        n_trials = 200 + int(rnd() * 700)
        shared_projects = tuple(p for p in subject.projects if rnd() < 0.7)
        user_ids: tuple[str, ...] = (subject.responsible_user,)
        if rnd() < 0.3 and users[0] != subject.responsible_user:
            user_ids = (users[0], subject.responsible_user)
        session = Session(
            id=new_id(rng),
            subject=subject.id,
            start_time=_stamp(days(day), begin),
            auto_datetime=modified,
            number=number,
            lab=subject.lab,
            users=tuples.setdefault(user_ids, user_ids),
            location=rig,
            procedures=behaviour,
            projects=tuples.setdefault(shared_projects, shared_projects),
            task_protocol=_PROTOCOLS[int(rnd() * len(_PROTOCOLS))],
            end_time=_stamp(days(day), min(begin + duration, 86399)),
            n_trials=n_trials,
            n_correct_trials=int(n_trials * (0.5 + rnd() * 0.4)),
            qc=_QC[int(rnd() * len(_QC))],
        )
        sessions.append(session)
        colony.insert("session", session)
    for _ in range(n_weighings):
        micro = 1 + int(rnd() * 999_999) if rnd() < 0.2 else 0
        colony.insert(
            "weighing",
            Weighing(
                id=new_id(rng),
                subject=subject.id,
                date_time=_stamp(days(start + int(rnd() * span)), 30000 + int(rnd() * 3600), micro),
                weight=round(base_weight + implant - 2.5 + rnd() * 4, 1),
                user=users[int(rnd() * len(users))],
            ),
        )
    restricted_from = start
    if i % 4 == 1:
        restricted_from = start + int(rnd() * span)
        # dead subjects' restrictions were closed by the death; some living ones ended earlier
        closed = subject.death_date is not None or i % 8 == 5
        stop = min(end, restricted_from + 5 + int(rnd() * 30)) if closed else None
        colony.insert(
            "waterrestriction",
            WaterRestriction(
                id=new_id(rng),
                subject=subject.id,
                start_time=_stamp(days(restricted_from), 32400),
                end_time=_stamp(days(stop), 64800) if stop is not None else None,
                water_type=water_types[0],
                reference_weight=round(base_weight + implant + rnd() * 2, 1),
            ),
        )
    for _ in range(n_admins):
        during = sessions[int(rnd() * len(sessions))] if sessions and rnd() < 0.5 else None
        if during is not None:
            given_at = during.end_time or during.start_time
        else:
            day = restricted_from + int(rnd() * (end - restricted_from + 1))
            given_at = _stamp(days(day), 43200 + int(rnd() * 3600))
        adlib = rnd() < 0.05
        colony.insert(
            "wateradmin",
            WaterAdministration(
                id=new_id(rng),
                subject=subject.id,
                date_time=given_at,
                water_administered=None if adlib else round(0.3 + rnd() * 1.2, 2),
                water_type=water_types[0] if rnd() < 0.8 else water_types[1],
                user=users[int(rnd() * len(users))],
                session=during.id if during is not None else None,
                adlib=adlib,
            ),
        )
