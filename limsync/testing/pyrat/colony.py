"""A deterministic PyRAT colony: animals, pups, lines, users, projects, licences and histories.

:meth:`PyratColony.generate` builds the same colony for the same arguments. Records are plain
dicts in PyRAT's own field names (``contracts/pyrat.md`` sections 5 and 6), so the server only
projects and sorts them. The generated colony always holds the traps a connector must survive:
two animals sharing an eartag, an eartag containing ``/``, an animal with three parents,
sacrificed and exported animals, every mutation grade. Tests change it while the server runs
with the ``add_*``, :meth:`modify_animal`, :meth:`sacrifice` and :meth:`delete_animal` methods.
"""

from __future__ import annotations

import copy
import random
import threading
from datetime import date, datetime, timedelta
from typing import Any

Record = dict[str, Any]

TODAY = date(2026, 3, 31)
GRADES = ("wt", "het", "hom", "+/+")
REASONS = ("Not usable age", "End of experiment", "Health issue")


class PyratColony:
    """The data behind a fake PyRAT; every method is thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.today = TODAY
        self.animals: list[Record] = []
        self.pups: list[Record] = []
        self.strains: list[Record] = []
        self.users: list[Record] = []
        self.projects: list[Record] = []
        self.licenses: list[Record] = []
        self.weights: dict[int, list[Record]] = {}
        self.comments: dict[int, list[Record]] = {}
        self.procedures: dict[int, list[Record]] = {}
        self._next = 1000
        self._rng = random.Random(0)

    def new_id(self) -> int:
        """A fresh id for any record kind."""
        with self.lock:
            self._next += 1
            return self._next

    # --- generation -----------------------------------------------------------------------------

    @classmethod
    def generate(cls, seed: int = 0, n_animals: int = 30, n_pups: int = 4) -> PyratColony:
        """A colony of ``n_animals`` (at least 6) animals with histories, the same every time."""
        colony = cls()
        rng = colony._rng = random.Random(seed)
        colony.users = [
            {"userid": 11 + i, "username": u, "fullname": f}
            for i, (u, f) in enumerate(
                [("jdoe", "Doe Jane"), ("rroe", "Roe Rick"), ("amust", "Muster Anna")]
            )
        ]
        colony.strains = [
            {"id": 81, "name": "C57BL6/ N", "official_name": "C57BL/6N", "active": 1},
            {"id": 5, "name": "Line-A", "official_name": "B6.Cg-Tg(A)", "active": 1},
            {"id": 7, "name": "Line-B", "official_name": None, "active": 0},
        ]
        colony.projects = [
            {"id": 3, "name": "Project X", "status": "active"},
            {"id": 4, "name": "Project Y", "status": "inactive"},
        ]
        colony.licenses = [
            {"license_id": 9, "license_number": "02_Zucht"},
            {"license_id": 10, "license_number": "G-21-7"},
        ]
        mutations = [(66, "cbl-b"), (67, "Ai14"), (68, "Cre")]
        for i in range(max(6, n_animals)):
            strain = rng.choice(colony.strains)
            licence = rng.choice([*colony.licenses, None])
            state = "live" if i % 5 else rng.choice(("sacrificed", "exported"))
            if i == 0:
                state = "sacrificed"
            born = datetime(2024, 1, 1) + timedelta(days=rng.randrange(700))
            muts = [
                {"mutation_id": m, "mutationname": n, "grade_id": g + 1, "mutationgrade": GRADES[g]}
                for m, n in rng.sample(mutations, rng.randrange(3))
                for g in [rng.randrange(len(GRADES))]
            ]
            colony.add_animal(
                eartag_or_id=f"ROS-{1000 + rng.randrange(9000)}",
                labid=f"T{i}" if i % 3 else None,
                sex=("f", "m", "?")[i % 3],
                dateborn=born.isoformat(),
                state=state,
                strain_id=strain["id"],
                mutations=muts,
                licence_id=licence["license_id"] if licence else None,
                projects=[
                    {"project_label": p["name"]} for p in colony.projects if rng.random() < 0.4
                ],
                responsible_id=rng.choice(colony.users)["userid"],
                weights=rng.randrange(4),
                comments=rng.randrange(3),
                procedures=rng.randrange(2),
            )
        a = colony.animals
        a[-1]["eartag_or_id"] = a[-2]["eartag_or_id"]  # eartags repeat
        a[3]["eartag_or_id"] = "ROS/17"  # PyRAT answers 404 for "/" in a path
        for child in a[4:]:
            child["parents"] = [_parent(child, p) for p in rng.sample(a[:4], 2)]
        a[5]["parents"] = [_parent(a[5], p) for p in a[:3]]  # more than two parents
        for i in range(n_pups):
            colony.pups.append(
                {
                    "pupid": 900 + i,
                    "eartag_or_id": f"P-{i}" if i else None,
                    "sex": ("f", "m", "?")[i % 3],
                    "dateborn": (datetime(2026, 3, 20) + timedelta(days=i)).isoformat(),
                    "strain_id": 5,
                    "strain_name": "Line-A",
                    "mutations": [],
                    "parents": [_parent({"animalid": 0}, a[4])],
                }
            )
        return colony

    # --- changes --------------------------------------------------------------------------------

    def add_animal(
        self, *, weights: int = 0, comments: int = 0, procedures: int = 0, **fields: Any
    ) -> Record:
        """Add an animal (defaults for missing fields) with that many history items."""
        with self.lock:
            animalid = fields.pop("animalid", None) or self.new_id() * 7 % 100_000 + 100_000
            record: Record = {
                "animalid": animalid, "eartag_or_id": f"NEW-{animalid}", "labid": None,
                "state": "live", "sex": "?", "dateborn": None, "datesacrificed": None,
                "sacrifice_reason_name": None, "sacrifice_comment": None,
                "species_name": "Mouse", "strain_id": None, "generation": "F1",
                "mutations": [], "parents": [], "cagenumber": f"C{animalid % 17}",
                "room_name": "R1.04", "building_name": "Main", "responsible_id": None,
                "owner_userid": 11, "owner_username": "jdoe", "owner_fullname": "Doe Jane",
                "licence_id": None, "projects": [], "weight": None, "date_last_comment": None,
                "comments": [], "requests": [],
            }  # fmt: skip
            record.update(fields)
            self.animals.append(record)
            self.weights[animalid] = []
            self.comments[animalid] = []
            self.procedures[animalid] = []
            for _ in range(weights):
                self.add_weight(animalid)
            for _ in range(comments):
                self.add_comment(animalid)
            for _ in range(procedures):
                self.add_procedure(animalid)
            if record["state"] == "sacrificed" and not record["datesacrificed"]:
                record["datesacrificed"] = "2025-12-01T00:00:00"
                record["sacrifice_reason_name"] = self._rng.choice(REASONS)
            return record

    def animal(self, animalid: int) -> Record:
        """The stored record of one animal (KeyError if there is none)."""
        with self.lock:
            for record in self.animals:
                if record["animalid"] == animalid:
                    return record
            raise KeyError(animalid)

    def modify_animal(self, animalid: int, **changes: Any) -> Record:
        """Change fields of an animal."""
        with self.lock:
            record = self.animal(animalid)
            record.update(changes)
            return record

    def sacrifice(self, animalid: int, when: str, reason: str) -> Record:
        """Mark an animal sacrificed on ``when`` (ISO date) for ``reason``."""
        return self.modify_animal(
            animalid,
            state="sacrificed",
            datesacrificed=f"{when}T00:00:00",
            sacrifice_reason_name=reason,
        )

    def delete_animal(self, animalid: int) -> None:
        """Remove an animal and its histories (a hard delete)."""
        with self.lock:
            self.animals.remove(self.animal(animalid))
            for table in (self.weights, self.comments, self.procedures):
                table.pop(animalid, None)

    def add_weight(self, animalid: int, weight: float | None = None) -> Record:
        """Weigh an animal; its ``weight`` becomes this latest value."""
        with self.lock:
            items = self.weights[animalid]
            value = weight if weight is not None else round(18 + self._rng.random() * 10, 1)
            when = datetime(2026, 1, 1) + timedelta(hours=len(items) * 30 + animalid % 24)
            item = {
                "weight_id": self.new_id(),
                "weight": value,
                "weight_time": when.isoformat(),
                "actor_name": "Doe Jane",
            }
            items.append(item)
            self.animal(animalid)["weight"] = value
            return item

    def add_comment(self, animalid: int, content: str | None = None) -> Record:
        """Comment on an animal; ``date_last_comment`` follows."""
        with self.lock:
            items = self.comments[animalid]
            created = datetime(2026, 2, 1) + timedelta(minutes=self.new_id())
            item = {
                "comment_id": self.new_id(),
                "created": created.isoformat(),
                "creator_id": 11,
                "creator_username": "jdoe",
                "creator_fullname": "Doe Jane",
                "origin": "animal",
                "content": content if content is not None else f"note {len(items) + 1}",
                "attributes": [{"label": "project", "content": "aeon"}] if not items else [],
            }
            items.append(item)
            self.animal(animalid)["date_last_comment"] = item["created"]
            return item

    def add_procedure(self, animalid: int, name: str = "A99 - food restriction") -> Record:
        """Record a procedure on an animal (the animal's list fields do not change)."""
        with self.lock:
            item = {
                "assign_id": self.new_id(),
                "procedure_id": 41,
                "procedure_name": name,
                "procedure_date": "2026-02-10",
                "license_id": 9,
                "license_number": "02_Zucht",
                "classification_id": 2,
                "classification_name": "mild",
                "actor_fullname": "Doe Jane",
                "comment": None,
            }
            self.procedures[animalid].append(item)
            return item

    # --- reading --------------------------------------------------------------------------------

    def animal_view(self, record: Record) -> Record:
        """An animal with its computed and joined fields (ages, names, licence, comments)."""
        with self.lock:
            out = copy.deepcopy(record)
            strain = next((s for s in self.strains if s["id"] == record["strain_id"]), None)
            out["strain_name"] = strain["name"] if strain else None
            out["strain_name_with_id"] = f"{strain['name']} ({strain['id']})" if strain else None
            licence = next(
                (x for x in self.licenses if x["license_id"] == record["licence_id"]), None
            )
            out["licence_number"] = licence["license_number"] if licence else None
            out["licence_title"] = "Zucht" if licence else None
            user = next((u for u in self.users if u["userid"] == record["responsible_id"]), None)
            out["responsible_fullname"] = user["fullname"] if user else None
            born = record["dateborn"]
            age = (self.today - date.fromisoformat(born[:10])).days if born else None
            out["age_days"] = age
            out["age_weeks"] = age // 7 if age is not None else None
            out["comments"] = copy.deepcopy(self.comments.get(record["animalid"], []))
            for key in ("mutations", "parents"):
                for item in out[key]:
                    item["animalid"] = record["animalid"]
            return out

    def items(self, kind: str, animalids: list[int]) -> list[Record]:
        """The weights, comments or procedures of these animals, in order."""
        table = {"weights": self.weights, "comments": self.comments}.get(kind, self.procedures)
        with self.lock:
            return [copy.deepcopy(i) for a in animalids for i in table.get(a, [])]


def _parent(child: Record, parent: Record) -> Record:
    return {
        "animalid": child["animalid"],
        "parent_id": parent["animalid"],
        "parent_eartag": parent["eartag_or_id"],
        "parent_sex": parent["sex"] if parent["sex"] != "?" else "f",
    }
