"""Real client libraries against the llmjobs HTTP API, driven by tests/http_clients.rs.

    python clients.py <scenario> <base-url> <token>

Each scenario asserts what it expects and exits non-zero, saying why, if it does not get it.
"""

import json
import sys
import time
import urllib.request

import openai

MODEL = "openai/gpt-4o-mini"


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def client(base, token):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0, timeout=30)


def direct(base, token):
    """An answer within the wait comes back as an ordinary completion."""
    completion = client(base, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "fast question"}]
    )
    assert completion.object == "chat.completion", completion
    assert completion.choices[0].message.role == "assistant", completion
    assert completion.choices[0].message.content == "fast answer", completion
    assert completion.choices[0].finish_reason == "stop", completion
    assert completion.usage.total_tokens > 0, completion
    assert completion.id.startswith("chatcmpl-"), completion


def accepted(base, token):
    """Past the wait: 202 with the job id and a Location, then the result by polling."""
    raw = client(base, token).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "slow question"}],
        extra_headers={"X-Llmjobs-Wait": "100ms"},
    )
    assert raw.status_code == 202, raw.status_code
    job = raw.http_response.json()
    location = raw.headers["location"]
    assert location == f"/jobs/{job['id']}", (location, job)
    assert raw.headers["x-llmjobs-job-id"] == job["id"], raw.headers
    assert job["state"] in ("pending", "running"), job
    deadline = time.monotonic() + 30
    while True:
        polled = get_json(f"{base}{location}")
        if polled["state"] == "completed":
            break
        assert polled["state"] in ("pending", "running"), polled
        assert time.monotonic() < deadline, f"the job never completed: {polled}"
        time.sleep(0.05)
    assert polled["result"]["text"] == "slow answer", polled
    print(job["id"])


def stream(base, token):
    """stream: true gives OpenAI's chunks, which the client assembles, then [DONE]."""
    chunks = list(
        client(base, token).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "stream question"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks), chunks
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a streamed answer in several words", (text, chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]
    assert len({c.id for c in chunks}) == 1, "one completion id"


def wrong_key(base, token):
    """A wrong API key is the OpenAI client's AuthenticationError."""
    try:
        client(base, "not-" + token).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fast question"}]
        )
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert "Bearer" in e.message, e.message
    else:
        raise AssertionError("a wrong key was accepted")


def openapi_document(base, token):
    """The served document validates as OpenAPI 3.1 with a real validator."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    doc = get_json(f"{base}/openapi.json")
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    validate(doc, cls=OpenAPIV31SpecValidator)


SCENARIOS = {f.__name__: f for f in (direct, accepted, stream, wrong_key, openapi_document)}

if __name__ == "__main__":
    scenario, base, token = sys.argv[1:4]
    SCENARIOS[scenario](base, token)
