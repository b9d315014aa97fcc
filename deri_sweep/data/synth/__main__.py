"""``python -m deri_sweep.data.synth``: write the synthetic twin (see :mod:`deri_sweep.data.synth.twin`)."""

from __future__ import annotations

from deri_sweep.data.synth.twin import main

raise SystemExit(main())
