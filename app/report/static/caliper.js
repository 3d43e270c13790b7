// Draws each chart of a Caliper report page: a <figure class="chart"> holds its Vega-Lite spec as JSON,
// drawn as SVG by vega-embed (loaded before this script); one inside a closed <details> (a slice group's
// diagram) is drawn when it is opened. A plot that cannot be drawn says so in its place.
(function () {
  function draw(figure) {
    var plot = figure.querySelector(".plot");
    if (plot.hasAttribute("data-started")) return;
    plot.setAttribute("data-started", "true");
    var spec = JSON.parse(figure.querySelector("script[type='application/json']").textContent);
    vegaEmbed(plot, spec, { renderer: "svg", actions: false }).then(function () {
      plot.setAttribute("data-drawn", "true");
    }).catch(function (error) {
      plot.textContent = "This plot could not be drawn: " + error;
      throw error;
    });
  }
  document.querySelectorAll("figure.chart").forEach(function (figure) {
    var closed = figure.closest("details");
    if (closed && !closed.open) {
      closed.addEventListener("toggle", function () { if (closed.open) draw(figure); });
    } else {
      draw(figure);
    }
  });
})();
