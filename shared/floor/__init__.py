"""The floor model flow and notifications both apply: visits, rooms, providers and
delays (``model``), the wait estimator (``estimator``), the day's statistics
(``day_stats``), one clinic's floor with its estimator (``clinic_flow``) and its
snapshots (``snapshot``). Pure: no I/O, no clock reads."""
