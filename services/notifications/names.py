"""Every clinic's names and clock as the notifications service words its messages: the
``Names`` of a clinic (domain/texts.py) built from the configuration once and kept.

``CLINICFLOW_CLINICS`` (shared/clinics.py, read by every service) comes first; what it
leaves unsaid is filled in by the older notification rules (``clinic_name``,
``provider_names``, ``timezone`` in ``CLINICFLOW_NOTIFICATIONS_RULES``), then by
``CLINICFLOW_DEFAULT_TIMEZONE``; a provider or room named by none of them by the name an
import brought (``directory.named``, kept by the service's own directory consumer,
shared/directory.py), else read from its id. No I/O: the imported names are in memory.
"""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

from services.notifications.domain import Names, RuleBook
from shared.clinics import ClinicDirectory
from shared.directory import NO_NAMES, DirectoryNames, ImportedNames
from shared.settings import NotificationsSettings


class NameBook:
    """Every clinic's ``Names``: ``CLINICFLOW_CLINICS`` (shared/clinics.py) first; what it
    leaves unsaid is filled in by the older notification rules (``clinic_name``,
    ``provider_names``, ``timezone``), then by ``CLINICFLOW_DEFAULT_TIMEZONE``.
    ``zoned`` are the clinics ``CLINICFLOW_CLINICS`` gives a zone."""

    def __init__(self, directory: ClinicDirectory, rules: RuleBook,
                 zoned: frozenset[str] = frozenset()) -> None:
        self.directory = directory
        self.rules = rules
        self.zoned = zoned
        self._names: dict[str, Names] = {}
        self.imported: DirectoryNames | None = None
        self._imported_stamp = 0

    def use_imported(self, imported: DirectoryNames) -> None:
        """Name what the configuration does not by the names imports brought."""
        self.imported = imported

    def _imported(self, clinic_id: str) -> ImportedNames:
        return NO_NAMES if self.imported is None else self.imported(clinic_id)

    def __call__(self, clinic_id: str) -> Names:
        if self.imported is not None and self.imported.changes != self._imported_stamp:
            self._names.clear()  # an imported name changed: the next message says it
            self._imported_stamp = self.imported.changes
        names = self._names.get(clinic_id)
        if names is None:
            clinic, rules = self.directory[clinic_id], self.rules.for_clinic(clinic_id)
            zone = clinic.zone
            if clinic_id not in self.zoned and rules.timezone is not None:
                zone = ZoneInfo(rules.timezone)
            imported = self._imported(clinic_id)
            names = Names(clinic=clinic.name or rules.clinic_name,
                          providers={**imported.providers, **rules.provider_names,
                                     **clinic.providers},
                          rooms={**imported.rooms, **clinic.rooms}, zone=zone)
            if len(self._names) < 1000:  # clinic ids come from events: keep it bounded
                self._names[clinic_id] = names
        return names

    @classmethod
    def of(cls, settings: NotificationsSettings, rules: RuleBook) -> NameBook:
        """The deployment's: ``CLINICFLOW_CLINICS`` and the rules it was started with."""
        document = json.loads(settings.clinics) if settings.clinics else {}
        zoned = frozenset(clinic_id for clinic_id, entry in document.items()
                          if isinstance(entry, dict) and "timezone" in entry)
        return cls(settings.clinic_directory(), rules, zoned)

    def configured(self, clinic_id: str) -> bool:
        """The clinic is named in the configuration (``CLINICFLOW_CLINICS`` or the
        rules): a bounded set, which metric labels may name."""
        return clinic_id in self.directory or clinic_id in self.rules.clinics
