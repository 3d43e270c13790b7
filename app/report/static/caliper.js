// Draws each chart of a Caliper report page: a <figure class="chart"> holds its Vega-Lite spec as JSON,
// drawn as SVG by vega-embed (loaded before this script). A plot that cannot be drawn says so in its place.
(function () {
  document.querySelectorAll("figure.chart").forEach(function (figure) {
    var plot = figure.querySelector(".plot");
    var spec = JSON.parse(figure.querySelector("script[type='application/json']").textContent);
    vegaEmbed(plot, spec, { renderer: "svg", actions: false }).then(function () {
      plot.setAttribute("data-drawn", "true");
    }).catch(function (error) {
      plot.textContent = "This plot could not be drawn: " + error;
      throw error;
    });
  });
})();
