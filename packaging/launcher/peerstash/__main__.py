"""The Briefcase app module: ``python -m peerstash`` in the packaged app.

Briefcase names the app module after the app (``peerstash``), which is also our namespace
package, so this file is a namespace *portion* (no ``__init__.py``) that merges with the
``peerstash.core``/``peer``/``desktop`` packages from our wheel. It only hands over to the
real entry point.
"""

from __future__ import annotations

import sys

from peerstash.desktop.__main__ import main

if __name__ == "__main__":
    sys.argv[0] = "peerstash"
    sys.exit(main())
