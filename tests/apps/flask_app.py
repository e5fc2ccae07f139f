"""A small real Flask app served by fcgiserver in the tests: url_for, plain and _external."""

from __future__ import annotations

from flask import Flask, jsonify, request, url_for
from flask.typing import ResponseReturnValue

app = Flask(__name__)


@app.route("/")
def links() -> ResponseReturnValue:
    return jsonify(
        item=url_for("item", name="x y"),
        item_external=url_for("item", name="x y", _external=True),
        script_root=request.script_root,
        path=request.path,
    )


@app.route("/item/<name>")
def item(name: str) -> ResponseReturnValue:
    return jsonify(name=name, url=request.url)


@app.route("/form", methods=["POST"])
def form() -> ResponseReturnValue:
    return jsonify(fields=request.form.to_dict())


application = app.wsgi_app
