"""A report or leaderboard as one static HTML file: no server, no network, no external assets.

The page has inline CSS (readable on a phone: viewport meta, tables scroll horizontally inside their
box), a small inline script that sorts a table when a header is clicked (numbers numerically, blanks
last; reference rows such as *average*, *chance* and *majority* stay pinned at the bottom), and plots
embedded as base64 PNG. Opening ``page.html#sort=<table id>:<column>:<asc|desc>`` sorts on load, which
is how the headless-browser test checks the script.
"""

from __future__ import annotations

import base64
import html
import re

from bench.report.document import Document, Figure, Table, slug

PINNED = ("average", "chance", "majority", "paper average")
_NUM = re.compile(r"^\s*[-+]?\d+(?:\.\d+)?")

CSS = """
:root{--fg:#1d2330;--muted:#5b6578;--line:#d9dee7;--head:#f2f4f8;--accent:#2f5fb3}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff}
main{max-width:1100px;margin:0 auto;padding:12px 14px 40px}
h1{font-size:1.45em;margin:.4em 0}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid var(--line)}
h3{font-size:1.02em;margin:1.2em 0 .3em}
p,figcaption,.note{color:var(--muted);font-size:.9em}
code{font-size:.85em;background:var(--head);padding:1px 4px;border-radius:3px;word-break:break-all}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-size:.88em;min-width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
td[data-v]{text-align:right}
th:first-child,td:first-child{text-align:left;position:sticky;left:0;background:#fff}
thead th{background:var(--head);cursor:pointer;user-select:none;position:sticky;top:0}
thead th:first-child{background:var(--head);z-index:1}
th[aria-sort=ascending]::after{content:" \\25B2";color:var(--accent)}
th[aria-sort=descending]::after{content:" \\25BC";color:var(--accent)}
tr.pin td{background:#fafbfd;font-style:italic}
figure{margin:0 0 18px}img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
nav ul{padding-left:1.1em;margin:.3em 0}nav a{color:var(--accent)}
@media (max-width:600px){body{font-size:14px}th,td{padding:4px 6px}}
"""

JS = """
(function(){
function key(row,col){var c=row.cells[col];if(!c)return null;var v=c.getAttribute('data-v');
 return v!==null?parseFloat(v):c.textContent.trim().toLowerCase();}
function sortTable(t,col,dir){var tb=t.tBodies[0];var rows=Array.prototype.slice.call(tb.rows);
 var pinned=rows.filter(function(r){return r.classList.contains('pin');});
 var body=rows.filter(function(r){return !r.classList.contains('pin');});
 body.sort(function(a,b){var x=key(a,col),y=key(b,col),nx=typeof x==='number',ny=typeof y==='number';
  if(nx!==ny)return nx?-1:1;var r=nx?x-y:(x<y?-1:x>y?1:0);return dir==='desc'?-r:r;});
 body.concat(pinned).forEach(function(r){tb.appendChild(r);});
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){
  if(i===col)th.setAttribute('aria-sort',dir==='desc'?'descending':'ascending');else th.removeAttribute('aria-sort');});
 t.setAttribute('data-sorted',col+':'+dir);}
window.benchSort=sortTable;
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.tabIndex=0;
  th.addEventListener('click',function(){sortTable(t,i,th.getAttribute('aria-sort')==='ascending'?'desc':'asc');});
  th.addEventListener('keydown',function(e){if(e.key==='Enter')th.click();});});});
function fromHash(){var m=location.hash.match(/^#sort=([^:]+):(\\d+):(asc|desc)$/);
 if(m){var t=document.getElementById(decodeURIComponent(m[1]));if(t)sortTable(t,+m[2],m[3]);}}
fromHash();window.addEventListener('hashchange',fromHash);
})();
"""


def table_id(t: Table) -> str:
    return "t-" + slug(t.key)


def _cell(tag: str, value: object) -> str:
    text = "" if value is None else str(value)
    m = _NUM.match(text)
    attr = f' data-v="{m.group(0).strip()}"' if m and tag == "td" else ""
    return f"<{tag}{attr}>{html.escape(text)}</{tag}>"


def table_html(t: Table) -> str:
    """One table with title, caption and notes; ``<table class="sortable" id="t-<key>">``."""
    shown = t.shown()
    head = "".join(_cell("th", c) for c in shown.columns)
    body = []
    for _, row in shown.iterrows():
        lead = [str(v).strip().lower() for v in row.iloc[:2]]
        cls = ' class="pin"' if any(v.startswith(PINNED) for v in lead) else ""
        body.append(f"<tr{cls}>" + "".join(_cell("td", v) for v in row.tolist()) + "</tr>")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in t.notes)
    return (
        f'<figure><h3 id="h-{slug(t.key)}">{html.escape(t.title)}</h3>'
        f'<div class="scroll"><table class="sortable" id="{table_id(t)}"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
        f"<figcaption>{html.escape(t.caption)}</figcaption>{notes}</figure>"
    )


def figure_html(f: Figure) -> str:
    """An embedded PNG (base64), so the page stands alone."""
    data = base64.b64encode(f.png.read_bytes()).decode()
    cap = html.escape(f.caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{cap}" loading="lazy"><figcaption>{cap}</figcaption></figure>'


def to_html(doc: Document) -> str:
    """The whole document as a single self-contained HTML page."""
    toc = "".join(f'<li><a href="#s-{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(doc.sections))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in doc.intro]
    if doc.command:
        parts.append(f"<p>Generated by: <code>{html.escape(doc.command)}</code></p>")
    if len(doc.sections) > 1:
        parts.append(f"<nav><ul>{toc}</ul></nav>")
    for i, s in enumerate(doc.sections):
        parts.append(f'<section><h2 id="s-{i}">{html.escape(s.title)}</h2>')
        parts += [f"<p>{html.escape(line)}</p>" for line in s.text]
        parts += [table_html(t) for t in s.tables]
        parts += [figure_html(f) for f in s.figures]
        parts.append("</section>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"
