"""The examples of /docs, tried in document order on a fresh service, all answer 2xx.

The walk reads the OpenAPI document, so routes added later are walked too. For each operation:
- a JSON request body is each example of its schema (an operation whose JSON body has no example fails
  the test: give its schema `json_schema_extra={"examples": [...]}` that works after the ones before it);
- a path parameter whose value the service assigns (`job_id`, `version`) is the value the latest
  response carried under that name, as a user reads it off the answer before; any other (`model_id`,
  which the examples choose) is its documented example, else such a value; required query parameters
  need an example;
- DELETE operations run last, in reverse order, as a user tidying up would (deleting the example model
  first would make every later example a 404);
- bodies that are not JSON (file uploads) have no example to try and are left out.
"""

from tests.api.conftest import running_app


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _examples(spec: dict, content: dict) -> list:
    if "example" in content:
        return [content["example"]]
    if "examples" in content:
        return [example["value"] for example in content["examples"].values()]
    return list(_resolve(spec, content.get("schema", {})).get("examples", []))


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    walked = [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    return [w for w in walked if w[0] != "delete"] + [w for w in reversed(walked) if w[0] == "delete"]


ASSIGNED = ("job_id", "version")  # chosen by the service, so a fixed example goes stale as the walk goes on


def _parameter(parameter: dict, seen: dict):
    if parameter["name"] in ASSIGNED and parameter["name"] in seen:
        return seen[parameter["name"]]
    schema = parameter.get("schema", {})
    for source in (parameter, schema):
        if "example" in source:
            return source["example"]
        if source.get("examples"):
            examples = source["examples"]
            return examples[0] if isinstance(examples, list) else next(iter(examples.values()))["value"]
    return seen.get(parameter["name"])


def test_every_docs_example_answers_2xx_in_document_order(tmp_path):
    with running_app(tmp_path, workers=0) as client:  # no worker: submitted jobs wait, so they can be cancelled
        spec = client.get("/openapi.json").json()
        seen: dict = {}
        tried = []
        for method, path, operation in _operations(spec):
            url, query = path, {}
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("path", "query") or (parameter["in"] == "query" and not parameter.get("required")):
                    continue
                value = _parameter(parameter, seen)
                assert value is not None, (f"{method.upper()} {path}: parameter {parameter['name']!r} has no example and no "
                                           "earlier example's response carries it; document an example")
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", str(value))
                else:
                    query[parameter["name"]] = value
            content = operation.get("requestBody", {}).get("content", {})
            if content and "application/json" not in content:
                continue  # a file upload: /docs has nothing to try
            bodies = [None]
            if "application/json" in content:
                bodies = _examples(spec, content["application/json"])
                assert bodies, f"{method.upper()} {path}: the JSON body has no example in /docs; add one that works in this order"
            for body in bodies:
                response = client.request(method.upper(), url, params=query, json=body)
                tried.append(f"{method.upper()} {url}" + (" optimizer_options" if "optimizer_options" in (body or {}) else ""))
                assert 200 <= response.status_code < 300, f"{method.upper()} {url} with {body}: {response.status_code} {response.text}"
                if response.headers.get("content-type", "").startswith("application/json") and isinstance(response.json(), dict):
                    seen.update((key, value) for key, value in response.json().items()  # a model's version, not the service's
                                if (key.endswith("_id") and isinstance(value, str)) or (key == "version" and type(value) is int))
        # the walk covered the core of the API (and whatever was added since)
        for expected in ("POST /models", "PUT /models/iris/weights", "POST /models/iris/training-jobs",
                         "POST /models/iris/search-jobs", "DELETE /models/iris"):
            assert expected in tried
        assert any(t.startswith("POST /jobs/") and t.endswith("/cancel") for t in tried)
        assert "POST /models/iris/training-jobs optimizer_options" in tried  # a job with the optimizer's own settings
