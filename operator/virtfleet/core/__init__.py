"""Pure policy, rendering and planning code: no I/O, no clocks read implicitly, unit-tested."""
