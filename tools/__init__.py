"""Developer and operator tooling: the local stack, ``make up``'s demo, the simulator,
replay and backtest, the AsyncAPI generator and the ``clinicflow`` command. Tools may
import anything; nothing under ``services/`` or ``shared/`` imports ``tools``."""
