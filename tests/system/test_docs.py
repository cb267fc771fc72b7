"""The README and the pages under docs/: every relative link and anchor resolves, every page
is reachable from the README, and the README stays a front door."""
import glob
import os
import re

import pytest

from launching import REPO

ROOT = REPO
PAGES = sorted(['README.md', 'BENCHMARKS.md'] + [
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))])
README_LIMIT = 6 * 1024
"""The README's size in bytes at most: what it is, the two commands, links."""

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.M | re.S)


def read(page):
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def anchors(text):
    """GitHub's anchors of the headings of a Markdown ``text``: lower case, punctuation
    but '-' and '_' dropped, spaces as '-'."""
    return {re.sub(r'[^\w\- ]', '', line.lstrip('#').strip().lower()).replace(' ', '-')
            for line in FENCE.sub('', text).splitlines() if line.startswith('#')}


def links(page):
    """The relative link targets of ``page``, outside code blocks."""
    return [t for t in LINK.findall(FENCE.sub('', read(page)))
            if not re.match(r'[a-z]+:', t)]


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) \
            if path else os.path.join(ROOT, page)
        if not os.path.exists(resolved):
            broken.append(f'{target} (no such file)')
        elif anchor and anchor not in anchors(read(os.path.relpath(resolved, ROOT))):
            broken.append(f'{target} (no such heading)')
    assert not broken, f'{page}: {broken}'


def test_every_docs_page_is_linked_from_the_readme():
    reached = {os.path.normpath(t.partition('#')[0]) for t in links('README.md')}
    missing = [p for p in PAGES if p.startswith('docs') and p not in reached]
    assert not missing, f'link these from the README: {missing}'


def test_the_readme_is_a_front_door():
    size = len(read('README.md').encode())
    assert size <= README_LIMIT, (
        f'README.md is {size} bytes; the manual belongs in docs/ (at most {README_LIMIT})')


def test_anchors_follow_github():
    assert anchors('## What `make train` gives\n### Which `--mpi`\n# A, b (c)\n') == {
        'what-make-train-gives', 'which---mpi', 'a-b-c'}


@pytest.mark.parametrize('page', PAGES)
def test_files_named_exist(page):
    """Files of the repository a page names (distributed/..., tests/..., configs/...,
    launch/... with a suffix: what set-up makes has none; scripts/... with or without, as
    scripts are commands) exist: a module moved is a page to change."""
    text = read(page)
    named = re.findall(r'\b((?:distributed|scripts|tests|configs|launch)/[\w/.-]*\.\w+)', text)
    named += re.findall(r'(?<![\w/.])(scripts/[\w/.-]*\w)', text)
    missing = sorted({p for p in named if not os.path.exists(os.path.join(ROOT, p))})
    assert not missing, f'{page} names files that do not exist: {missing}'
