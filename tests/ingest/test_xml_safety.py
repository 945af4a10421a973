"""The service-wide XML parser: hostile or broken inputs fail loudly or parse harmlessly, never leak files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.xml import JatsError, parse_xml

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE article [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<article><front><article-meta><title-group><article-title>T&xxe;</article-title></title-group></article-meta>
</front><body><p>Leak: &xxe; end.</p></body></article>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % remote SYSTEM "file:///etc/passwd"> %remote;]>
<r>x</r>"""

REMOTE_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE pmc-articleset PUBLIC "-//NLM//DTD ARTICLE SET 2.0//EN" "http://127.0.0.1:9/nlm-articleset-2.0.dtd">
<pmc-articleset><article><body><p>ok</p></body></article></pmc-articleset>"""


def billion_laughs(levels: int = 10) -> bytes:
    lines = ['<!ENTITY lol0 "lol">']
    lines += [f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, levels)]
    doctype = "<!DOCTYPE article [" + "".join(lines) + "]>"
    return f'<?xml version="1.0"?>{doctype}<article><body><p>&lol{levels - 1};</p></body></article>'.encode()


def test_external_entity_is_not_resolved() -> None:
    root = parse_xml(XXE_FILE)
    assert "root:" not in "".join(root.itertext())
    (paper,) = parse_jats(XXE_FILE)
    assert all("root:" not in block.text for block in paper.blocks)
    assert any(block.text == "Leak: end." for block in paper.blocks)  # the reference is dropped, text kept


def test_parameter_entity_is_not_loaded() -> None:
    # Either refused or parsed without reading the file; never the file's content.
    try:
        root = parse_xml(XXE_PARAMETER)
    except JatsError:
        return
    assert "root:" not in etree.tostring(root, encoding="unicode")


def test_remote_dtd_is_not_fetched() -> None:
    started = time.monotonic()
    (paper,) = parse_jats(REMOTE_DTD)
    assert time.monotonic() - started < 5
    assert [b.text for b in paper.blocks] == ["ok"]


def test_billion_laughs_is_not_expanded() -> None:
    # libxml2 may refuse the document outright (amplification guard) or keep the references unexpanded;
    # both are harmless. What must never happen is 10**9 "lol"s in memory.
    started = time.monotonic()
    try:
        (paper,) = parse_jats(billion_laughs())
    except JatsError as exc:
        assert "amplification" in str(exc) or "entity" in str(exc).lower()
    else:
        assert sum(len(b.text) for b in paper.blocks) < 1000
    assert time.monotonic() - started < 5


def test_small_internal_entities_are_not_expanded() -> None:
    data = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "EXPANDED">]><r>a &e; b</r>'
    assert "EXPANDED" not in "".join(parse_xml(data).itertext())


@pytest.mark.parametrize(
    "data",
    [b"", b"   \n", b"<article><body><p>cut", b"<a><b></a>", b"not xml at all", b"<?xml version='1.0'?>"],
)
def test_malformed_or_truncated_input_raises_jats_error(data: bytes) -> None:
    with pytest.raises(JatsError):
        parse_xml(data)
    with pytest.raises(JatsError):
        parse_jats(data)


def test_jats_error_is_a_value_error() -> None:
    # Callers (fetch, pipeline) catch ValueError for "bad payload".
    assert issubclass(JatsError, ValueError)


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(TypeError):
        parse_xml("<article/>")  # type: ignore[arg-type]


def test_comments_are_kept() -> None:
    root = parse_xml(
        b"<article><!--The publisher of this article does not allow downloading--><front/></article>"
    )
    assert any("does not allow" in (c.text or "") for c in root.iter(etree.Comment))


def test_recorded_truncated_prefix_raises(shared_data: Path) -> None:
    prefix = shared_data / "eutils/efetch-pmc/efetch_pmc_restricted_1484447_PREFIX.txt"
    if not prefix.exists():
        pytest.skip(f"missing {prefix}")
    with pytest.raises(JatsError, match="malformed or truncated"):
        parse_jats(prefix.read_bytes())
