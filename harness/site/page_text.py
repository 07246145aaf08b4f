"""Text that goes into the report's and the leaderboard's pages: user strings (method and task
names) made safe for each context they are written into."""

from __future__ import annotations

import json
from html import escape

# Inside <script>, the HTML parser ends the element at "</script", and after "<!--<script" it
# no longer ends it at "</script>" at all; U+2028/9 end a line in older JavaScript. Each is
# written as its JSON escape, which a JSON parser reads back as the same character.
_SCRIPT_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(value, allow_nan: bool = False) -> str:
    """JSON safe to inline in a <script> element whatever strings it holds (names are user
    input). NaN is refused by default because it is not JSON and would break the page's script."""
    return json.dumps(value, separators=(",", ":"), allow_nan=allow_nan).translate(_SCRIPT_ESCAPES)


def plotly_text(value) -> str:
    """Text for plotly, which renders its strings as HTML and decodes &amp;, &lt; and &gt; (not
    &quot;): a name with '<' in it shows as written instead of as a tag."""
    return escape(str(value), quote=False)
