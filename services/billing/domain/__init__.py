"""Billing's domain: the clinic's money rules, pure (no I/O, no clock: time comes in
as an argument). Money is integer cents everywhere. The ledger is a list of immutable
entries (``shared.events_billing``); an account, a receipt or a day's reconciliation is
a fold over entries, so the same code answers from the Redis projection and from a
replay of the ledger topic, and both give the same cents.

Rules, in the clinic's words:

* **Price** (``pricing``, ``fee_schedule``). Each CPT code at checkout is one line at
  the clinic's fee (a code listed twice is two lines). A checkout with a code the
  clinic's schedule does not list is not priced at all (never a partial charge).
* **Patient share** (``coverage``; integer cents, no floats): copay first (capped at
  the charge), then the remaining deductible on what is left, then coinsurance on
  what is left after that, ``rest * basis_points / 10_000`` rounded half up to the
  cent (a half cent goes to the patient). The share never exceeds the charge. No
  coverage recorded, or ``self_pay``: the patient's share is the whole charge. The
  payer is expected to pay the charge minus the share.
* **Balance** of a visit (``accounts``) = its patient shares - payments + refunds,
  counting only entries not voided. Negative is a credit owed to the patient.
* **Voids** (``payments``) take an entry out of every total; a void of a void means
  nothing. A payment with refunds standing cannot be voided (void the refunds first);
  voiding a charge voids its patient share with it.
* **Days** (``reconciliation``). An entry counts on the business day (clinic time zone)
  it was made: a refund or a void made on Tuesday changes Tuesday's totals.

* **Visits** (``visits``). A command names a visit of the clinic (checked in there, or
  on its ledger); a visit cancelled or left cannot be checked out; the floor is told of
  a visit's checkout once, while it has the visit open.
* **Clinic time** (``receipts``, ``reconciliation``). Entries are stamped in UTC; the
  clinic's zone turns them into its business day and the time printed on its receipts.

Modules: ``money`` (cents, stable ids), ``fee_schedule``, ``coverage`` (the share),
``accounts`` (a visit's entries folded), ``payments`` (payments, refunds, voids),
``pricing`` (checkout, re-pricing, undone checkouts), ``receipts``, ``reconciliation``,
``visits``.
A command the ledger cannot take raises a ``shared.errors`` refusal (``NotFound``,
``Conflict``, ``Rejected``), never an HTTP status.
"""
