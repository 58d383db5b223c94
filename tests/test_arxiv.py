"""`site_gen add` against a real HTTP server on 127.0.0.1 serving recorded arXiv replies."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from site_gen.kb import add, arxiv, check

FIXTURES = Path(__file__).parent / "fixtures"
WHY = "quantizes weights one column at a time and updates the rest with the inverse Hessian → 3.2.3"
GPTQ_XML = (FIXTURES / "arxiv_2210.17323.xml").read_bytes()
GOOD_ENTRY = (FIXTURES / "papers" / "2023" / "gptq.yaml").read_text(encoding="utf-8")
EMPTY_FEED = b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>q</title></feed>'
ERROR_FEED = (b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><entry>'
              b'<id>http://arxiv.org/api/errors#incorrect_id_format_for_2210.17323</id><title>Error</title>'
              b'<summary>incorrect id format for 2210.17323</summary></entry></feed>')
BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                  b'<feed xmlns="http://www.w3.org/2005/Atom"><title>&lol2;</title></feed>')


class ArxivStub:
    """A real HTTP server that answers each request with the next (status, body) in `replies`."""

    def __init__(self):
        self.replies: list[tuple[int, bytes]] = []
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.paths.append(self.path)
                status, body = stub.replies.pop(0) if stub.replies else (404, b"no reply queued")
                self.send_response(status)
                self.send_header("Content-Type", "application/atom+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):   # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/query"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = ArxivStub()
    yield s
    s.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A knowledge base with the real taxonomy (venues ensured) and an empty papers/."""
    from test_check import taxonomy_text
    (tmp_path / "taxonomy.yaml").write_text(taxonomy_text(), encoding="utf-8")
    (tmp_path / "papers").mkdir()
    return tmp_path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "papers").rglob("*"))


def do_add(root, stub, **kw):
    kw.setdefault("subcategories", ["3.2.3"])
    kw.setdefault("why", WHY)
    return add.add_paper(kw.pop("ref", "2210.17323"), root=root, base_url=stub.url, backoff=0, **kw)


def test_add_writes_a_valid_entry_from_the_recorded_reply(root, stub):
    stub.replies = [(200, GPTQ_XML)]
    path, text = do_add(root, stub, tags=["llm", "ptq"], code="https://github.com/IST-DASLab/gptq")
    assert path == root / "papers" / "2022" / "gptq.yaml"
    assert path.read_text(encoding="utf-8") == text
    entry = yaml.safe_load(text)
    assert entry == {
        "id": "gptq",
        "title": "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
        "authors": ["Elias Frantar", "Saleh Ashkboos", "Torsten Hoefler", "Dan Alistarh"],
        "year": 2022, "venue": "arXiv", "url": "https://arxiv.org/abs/2210.17323", "arxiv": "2210.17323",
        "code": "https://github.com/IST-DASLab/gptq", "subcategories": ["3.2.3"], "why": WHY, "classified_by": "curated",
        "tags": ["llm", "ptq"], "aliases": ["GPTQ"], "sources": ["arxiv"],
    }
    assert stub.paths == ["/api/query?id_list=2210.17323"]
    assert check.validate_paths([], root=root, techniques=None) == []
    assert files_under(root) == ["papers/2022", "papers/2022/gptq.yaml"]


def test_dry_run_writes_nothing(root, stub):
    stub.replies = [(200, GPTQ_XML)]
    path, text = do_add(root, stub, dry_run=True, ref="https://arxiv.org/abs/2210.17323v2")
    assert "id: gptq" in text and not path.exists()
    assert files_under(root) == []


def test_env_var_overrides_the_api_base(root, stub, monkeypatch):
    monkeypatch.setenv(arxiv.ENV_API, stub.url)
    stub.replies = [(200, GPTQ_XML)]
    path, _ = add.add_paper("2210.17323", subcategories=["3.2.3"], why=WHY, root=root, backoff=0)
    assert path.exists() and len(stub.paths) == 1


def test_http_500_then_success_is_retried(root, stub):
    stub.replies = [(500, b"busy"), (503, b"busy"), (200, GPTQ_XML)]
    path, _ = do_add(root, stub)
    assert path.exists() and len(stub.paths) == 3


@pytest.mark.parametrize("replies,message", [
    ([(200, b"<feed><entry>")], "arXiv API reply is not valid Atom XML"),
    ([(200, b"<html>hello</html>")], "arXiv API reply is not an Atom feed"),
    ([(200, EMPTY_FEED)], "arXiv has no paper 2210.17323"),
    ([(200, ERROR_FEED)], "arXiv API error for 2210.17323: incorrect id format"),
    ([(200, BILLION_LAUGHS)], "declares a DOCTYPE/ENTITY; refused"),
    ([(200, GPTQ_XML.replace(b"2210.17323v2</id>", b"2211.10438v1</id>"))], "not 2210.17323"),
    ([(200, GPTQ_XML.replace(b"2022-10-31T17:42:53Z", b"soon"))], "has no valid published date"),
    ([(404, b"")], "answered HTTP 404"),
    ([(500, b"")] * 4, "HTTP 500 (after 4 attempts)"),
], ids=["malformed", "not-atom", "empty-feed", "error-entry", "doctype", "wrong-entry", "no-date", "404", "500-always"])
def test_bad_replies_are_clear_errors_and_write_nothing(root, stub, replies, message):
    stub.replies = list(replies)
    with pytest.raises(arxiv.ArxivError) as exc:
        do_add(root, stub)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert files_under(root) == []


def test_offline_is_a_clear_error(root):
    with socket.socket() as s:   # a port that was free a moment ago and is now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/api/query"
    with pytest.raises(arxiv.ArxivError, match=rf"^cannot reach arXiv API at {base}: ConnectionError"):
        add.add_paper("2210.17323", subcategories=["3.2.3"], why=WHY, root=root, base_url=base, backoff=0)
    assert files_under(root) == []


def test_duplicate_arxiv_id_is_refused_before_any_request(root, stub):
    (root / "papers" / "2023").mkdir()
    (root / "papers" / "2023" / "gptq.yaml").write_text(GOOD_ENTRY, encoding="utf-8")
    with pytest.raises(add.AddError, match=r"arXiv 2210.17323 is already in the atlas: .*papers/2023/gptq.yaml"):
        do_add(root, stub)
    assert stub.paths == []


def test_duplicate_title_is_refused(root, stub):
    (root / "papers" / "2023").mkdir()
    other = GOOD_ENTRY.replace("arxiv: '2210.17323'\n", "").replace(
        "url: https://arxiv.org/abs/2210.17323", "url: https://openreview.net/forum?id=tcbBPnfwxS")
    (root / "papers" / "2023" / "gptq.yaml").write_text(other, encoding="utf-8")
    stub.replies = [(200, GPTQ_XML)]
    with pytest.raises(add.AddError, match="a paper titled 'GPTQ: Accurate .*' is already in the atlas"):
        do_add(root, stub)
    assert files_under(root) == ["papers/2023", "papers/2023/gptq.yaml"]


def test_taken_id_gets_the_year_suffix(root, stub):
    (root / "papers" / "2023").mkdir()
    other = GOOD_ENTRY.replace("arxiv: '2210.17323'\n", "").replace("GPTQ: Accurate", "Something Else:") \
        .replace("url: https://arxiv.org/abs/2210.17323", "url: https://example.org/gptq")
    (root / "papers" / "2023" / "gptq.yaml").write_text(other, encoding="utf-8")
    stub.replies = [(200, GPTQ_XML)]
    path, _ = do_add(root, stub)
    assert path.name == "gptq-2022.yaml"


@pytest.mark.parametrize("kw,message", [
    ({"subcategories": ["3.2.9"]}, "--subcategory: unknown value '3.2.9'"),
    ({"tags": ["llmm"]}, "--tag: unknown value 'llmm' (did you mean 'llm'?)"),
    ({"venue": "ICLRR"}, "--venue: unknown venue 'ICLRR' (did you mean 'ICLR'?)"),
    ({"code": "javascript:alert(1)"}, "--code: 'javascript:alert(1)' scheme javascript: is not allowed"),
    ({"ref": "22.1"}, "--arxiv: '22.1' is not an arXiv id"),
    ({"why": " "}, "--why: say in one line"),
    ({"contribution": "tutorial"}, "--contribution: unknown kind 'tutorial'"),
], ids=["subcategory", "tag", "venue", "code", "arxiv", "no-why", "contribution"])
def test_bad_arguments_fail_before_any_request(root, stub, kw, message):
    with pytest.raises((add.AddError, arxiv.ArxivError)) as exc:
        do_add(root, stub, **kw)
    assert message in str(exc.value)
    assert stub.paths == [] and files_under(root) == []


def test_no_subcategory_files_nothing_and_prints_the_keyword_hint(root, stub):
    stub.replies = [(200, GPTQ_XML)]
    with pytest.raises(add.AddError) as exc:
        do_add(root, stub, subcategories=[])
    assert "nothing was filed" in str(exc.value) and "the title suggests" in str(exc.value)
    assert files_under(root) == []


def test_a_survey_may_be_added_without_a_subcategory(root, stub):
    stub.replies = [(200, GPTQ_XML)]
    path, text = do_add(root, stub, subcategories=[], contribution="survey", why="a survey of PTQ for LLMs")
    entry = yaml.safe_load(text)
    assert entry["contribution"] == "survey" and entry["subcategories"] == [] and path.exists()


def test_invalid_id_is_caught_by_the_validator_and_nothing_is_written(root, stub):
    stub.replies = [(200, GPTQ_XML)]
    with pytest.raises(add.AddError, match="does not pass `site_gen check`:\n.*id: 'Bad_ID' is not kebab-case"):
        do_add(root, stub, entry_id="Bad_ID")
    assert files_under(root) == []


def test_cli_reports_errors_in_one_line_with_exit_1(root, stub, monkeypatch, capsys):
    monkeypatch.setattr(add, "ROOT", root)
    monkeypatch.setenv(arxiv.ENV_API, stub.url)
    stub.replies = [(200, EMPTY_FEED)] * 4
    assert add.main(["--arxiv", "2210.17323", "--subcategory", "3.2.3", "--why", WHY]) == 1
    err = capsys.readouterr().err
    assert err == "site_gen add: arXiv has no paper 2210.17323\n"
    stub.replies = [(200, GPTQ_XML)]
    assert add.main(["--arxiv", "2210.17323", "--subcategory", "3.2.3", "--why", WHY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and "(dry run, not written)" in out and "title: 'GPTQ: Accurate" in out
    assert files_under(root) == []


@pytest.mark.parametrize("title,taken,expected", [
    ("GPTQ: Accurate Post-Training Quantization", set(), "gptq"),
    ("GPTQ: Accurate Post-Training Quantization", {"gptq"}, "gptq-2022"),
    ("GPTQ: Accurate Post-Training Quantization", {"gptq", "gptq-2022"}, "gptq-2022-2"),
    ("QuIP#: Even Better LLM Quantization", set(), "quip"),
    ("Q-Diffusion: Quantizing Diffusion Models", set(), "q-diffusion"),
    ("Up or Down? Adaptive Rounding for Post-Training Quantization", set(), "up-or-down-adaptive-rounding"),
    ("A very long preamble that is not a method name: and more", set(), "a-very-long-preamble-that"),
    ("Über-Quant: Ça marche", set(), "uber-quant"),
    ("量子化", set(), "arxiv-2210-17323"),
])
def test_derive_id(title, taken, expected):
    assert add.derive_id(title, "2210.17323", 2022, taken) == expected


@pytest.mark.parametrize("ref,expected", [
    ("2210.17323", "2210.17323"), ("2210.17323v2", "2210.17323"), (" https://arxiv.org/abs/2210.17323v1 ", "2210.17323"),
    ("http://arxiv.org/pdf/2210.17323.pdf", "2210.17323"), ("hep-th/9901001", "hep-th/9901001"),
])
def test_parse_ref(ref, expected):
    assert arxiv.parse_ref(ref) == expected
