"""The names flow's screens show for a clinic's providers and rooms: those configured in
``CLINICFLOW_CLINICS`` first, then those imports brought (``directory.named``, kept by
flow's own directory consumer, ``shared/directory.py``). Every board view carries them
(``"names"``), so a provider imported after a screen was opened shows by name from the
next board on; events, metrics and Redis keep ids.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from shared.clinics import ClinicDirectory
from shared.directory import NO_NAMES, ImportedNames, layered


class BoardNames:
    """``names(clinic)``: the JSON of the clinic's names, ``{"providers": {id: name},
    "rooms": {id: name}}``, the same bytes until a name changes (board views keep what
    they rendered while the board and these are the same)."""

    def __init__(self, clinics: ClinicDirectory,
                 imported: Callable[[str], ImportedNames] | None = None,
                 changes: Callable[[], int] | None = None, size: int = 1000) -> None:
        self.clinics = clinics
        self.imported = imported or (lambda _clinic_id: NO_NAMES)
        self.changes = changes or (lambda: 0)
        self.size = size
        self._kept: dict[str, tuple[int, bytes]] = {}

    def names(self, clinic_id: str) -> dict[str, dict[str, str]]:
        """The clinic's providers' and rooms' display names by id."""
        clinic, imported = self.clinics[clinic_id], self.imported(clinic_id)
        return {"providers": layered(clinic.providers, imported.providers),
                "rooms": layered(clinic.rooms, imported.rooms)}

    def __call__(self, clinic_id: str) -> bytes:
        stamp = self.changes()
        kept = self._kept.get(clinic_id)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        rendered = orjson.dumps(self.names(clinic_id), option=orjson.OPT_SORT_KEYS)
        if kept is None and len(self._kept) >= self.size:  # clinic ids come from paths
            del self._kept[next(iter(self._kept))]
        self._kept[clinic_id] = (stamp, rendered)
        return rendered
