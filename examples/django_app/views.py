"""The catalog page: a "database" wait, then the CPU work of rendering, in `render_catalog`."""

import time

from django.http import HttpRequest, HttpResponse
from django.utils.html import escape


def load_products(count: int) -> list[dict]:
    time.sleep(0.002)  # The database round trip: in the wall profile, not the CPU profile.
    return [
        {"name": f"Product <{i}> & co", "price": (i * 37 % 1000) / 10, "stock": i % 13}
        for i in range(count)
    ]


def render_catalog(products: list[dict]) -> str:
    rows = []
    for repeat in range(4):
        rows.clear()
        for product in products:
            price = product["price"] * (1 + repeat / 1000)
            rows.append(
                f"<tr><td>{escape(product['name'])}</td><td>{price:.2f}</td>"
                f"<td>{'in stock' if product['stock'] else 'sold out'}</td></tr>"
            )
    return "<table>" + "".join(rows) + "</table>"


def catalog(request: HttpRequest) -> HttpResponse:
    count = int(request.GET.get("products", "400"))
    return HttpResponse(render_catalog(load_products(count)))
