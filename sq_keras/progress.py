"""Progress output that suits where it goes.

On a terminal, long loops show a live bar that redraws one line. On a pipe
or a log file, a redrawn bar would write carriage returns and escape codes
into the file; there each finished item gets one plain line instead.

```python
from sq_keras import progress

for batch in progress.items(batches, "pgd eps=0.3"):
    ...   # terminal: a tqdm bar; log file: "pgd eps=0.3: batch 3/8 (37.5 s, ETA 62.5 s)"

for batch in progress.items(batches, "pgd eps=0.3", status=lambda: f"{wrong} wrong"):
    ...   # "pgd eps=0.3: batch 3/8 (37.5 s, ETA 62.5 s; 12 wrong)"
```
"""

import sys
import time


def is_terminal(stream=None):
    """Whether `stream` (default: stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _plain_lines(items, description, total, stream, unit, status):
    start = time.perf_counter()
    for i, item in enumerate(items):
        yield item
        elapsed = time.perf_counter() - start
        eta = f", ETA {elapsed / (i + 1) * (total - i - 1):.1f} s" if total else ""
        note = f"; {status()}" if status else ""
        count = f"{i + 1}/{total}" if total else f"{i + 1}"
        line = f"{description}: {unit} {count} ({elapsed:.1f} s{eta}{note})"
        print(line, file=stream, flush=True)


def _bar(items, description, stream, unit, status):
    from tqdm import tqdm

    with tqdm(items, desc=description, unit=unit, leave=False, file=stream) as bar:
        for item in bar:
            yield item
            if status:
                bar.set_postfix_str(status())


def items(iterable, description, *, enabled=True, stream=None, unit="batch", status=None):
    """Iterates `iterable` and reports each finished item.

    Args:
        iterable: What to iterate; its `len` is used when it has one.
        description: Text before the count.
        enabled: False iterates silently.
        stream: Where progress goes (default: stdout).
        unit: Name of one item in the plain lines.
        status: Optional callable without arguments whose short text is shown
            after each finished item, e.g. a running count.

    Returns:
        An iterator over the same items.
    """
    if not enabled:
        return iter(iterable)
    stream = sys.stdout if stream is None else stream
    total = len(iterable) if hasattr(iterable, "__len__") else None
    if is_terminal(stream):
        return _bar(iterable, description, stream, unit, status)
    return _plain_lines(iterable, description, total, stream, unit, status)
