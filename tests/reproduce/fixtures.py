"""Shared fixtures of tests/reproduce/: hand-made comparison rows."""


def make_row(name, *, tested=True, **cells):
    """A row of `table.build_rows`, tested or not; `cells` override its fields."""
    row = {
        "name": name,
        "method": "natural",
        "settings": {},
        "note": f"{name} note",
        "epochs": 2,
        "seconds_per_epoch": 12.34,
        "seconds_per_step": 0.0123,
        "tested": tested,
        "clean_accuracy": 99.0 if tested else None,
        "robust_accuracy": {"pgd": 10.0} if tested else {},
        "worst_case_accuracy": 10.0 if tested else None,
        "failed_checks": [],
        "num_examples": 40 if tested else None,
    }
    row.update(cells)
    return row
