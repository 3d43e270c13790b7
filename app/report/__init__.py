"""The web report (api.md, "Web report"): server-rendered pages under /ui/ and standalone HTML files, drawn
from what is stored; plots are Vega-Lite specs drawn by vega-embed from a bundle shipped with the package."""
