"""People found without enrolling (indexer/face_clusters.py and `lookalike faces cluster / name / merge / split`),
end to end on drawn faces with the fake detector and embedder of test_faces_gallery (same person: cosine ~1.0,
different people: below 0.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.engine import LookalikeError
from indexer.face_clusters import DEFAULT_PARAMS, FaceClusters
from indexer.faces import UNKNOWN
from retrieval.faces.clustering import ClusterParams

from .test_cli_faces import fake_gallery, run  # noqa: F401  (the fixture)
from .test_faces_gallery import ALICE, BOB, CAROL, open_gallery, save_photo

DAVE = 4
PARAMS = ClusterParams(algorithm="agglomerative", threshold=0.6, min_size=2)


def people_of(clusters: FaceClusters) -> dict[frozenset, tuple[int, str | None]]:
    """Each cluster as the set of photo names of its faces -> (id, name)."""
    return {frozenset(Path(f.path).stem for f in c.faces): (c.id, c.name) for c in clusters.listing().clusters}


@pytest.fixture
def indexed(tmp_path: Path, db_url: str | None):
    """9 faces of alice, bob and carol indexed; on SQLite and on PostgreSQL (``db_url``)."""
    photos = tmp_path / "photos"
    for v in range(3):
        save_photo(photos / f"alice{v}.png", [ALICE], v)
        save_photo(photos / f"bob{v}.png", [BOB], v)
    save_photo(photos / "carol0.png", [CAROL], 0)
    save_photo(photos / "group.png", [ALICE, BOB], 5)
    g = open_gallery(tmp_path / "home", db_url=db_url)
    assert g.index_folder(photos).faces == 9
    return g, photos


def test_cluster_finds_people_keeps_lone_faces_apart_and_never_joins_one_photo(indexed):
    g, _ = indexed
    clusters = FaceClusters(g, PARAMS)
    rep = clusters.cluster()
    assert (rep.faces, rep.clusters, rep.unclustered, rep.new_clusters) == (9, 2, 1, 2)
    people = people_of(clusters)
    assert set(people) == {
        frozenset({"alice0", "alice1", "alice2", "group"}),
        frozenset({"bob0", "bob1", "bob2", "group"}),
    }
    listing = clusters.listing()
    assert [Path(f.path).stem for f in listing.unclustered] == ["carol0"]
    assert all(c.name is None for c in listing.clusters)
    # run again with nothing new: nothing moves
    again = clusters.cluster()
    assert (again.new_faces, again.joined, again.new_clusters) == (1, 0, 0) and people_of(clusters) == people


def test_name_makes_identify_know_the_person_and_new_photos_join(indexed, tmp_path):
    g, photos = indexed
    clusters = FaceClusters(g, PARAMS)
    clusters.cluster()
    alice_id = people_of(clusters)[frozenset({"alice0", "alice1", "alice2", "group"})][0]
    assert clusters.name(alice_id, "alice") == alice_id
    probe = save_photo(tmp_path / "probe.png", [ALICE], 9)
    assert [m.identity for m in g.identify(probe)] == ["alice"]
    assert [p.name for p in g.identities()] == ["alice"] and g.identities()[0].faces == 4
    # new photos: alice joins her named cluster (and is enrolled), dave becomes a new person
    save_photo(photos / "alice7.png", [ALICE], 7)
    save_photo(photos / "dave0.png", [DAVE], 0)
    save_photo(photos / "dave1.png", [DAVE], 1)
    g.index_folder(photos)
    rep = clusters.cluster()
    assert (rep.new_faces, rep.joined, rep.new_clusters) == (4, 1, 1)  # carol is still unclustered
    people = people_of(clusters)
    assert people[frozenset({"alice0", "alice1", "alice2", "alice7", "group"})] == (alice_id, "alice")
    assert frozenset({"dave0", "dave1"}) in people
    assert g.identities()[0].faces == 5
    # names survive clustering everything again
    clusters.cluster(rebuild=True)
    assert people_of(clusters)[frozenset({"alice0", "alice1", "alice2", "alice7", "group"})] == (alice_id, "alice")
    # renaming moves the enrolled faces to the new name
    clusters.name(alice_id, "alice smith")
    assert [(p.name, p.faces) for p in g.identities()] == [("alice smith", 5)]
    assert [m.identity for m in g.identify(probe)] == ["alice smith"]


def test_merge_and_split(indexed):
    g, photos = indexed
    save_photo(photos / "dave0.png", [DAVE], 0)
    save_photo(photos / "dave1.png", [DAVE], 1)
    g.index_folder(photos)
    clusters = FaceClusters(g, PARAMS)
    clusters.cluster()
    people = people_of(clusters)
    bob = people[frozenset({"bob0", "bob1", "bob2", "group"})][0]
    dave = people[frozenset({"dave0", "dave1"})][0]
    clusters.name(dave, "dave")
    assert clusters.merge(bob, dave) == bob
    merged = frozenset({"bob0", "bob1", "bob2", "group", "dave0", "dave1"})
    assert people_of(clusters)[merged] == (bob, "dave")  # the unnamed cluster takes the other's name
    with pytest.raises(LookalikeError, match=f"no face cluster {dave}"):
        clusters.merge(bob, dave)
    # split without face ids: clustered again, stricter, until bob and dave fall apart; the larger part keeps id
    new = clusters.split(bob)
    people = people_of(clusters)
    assert len(new) == 1 and people[frozenset({"bob0", "bob1", "bob2", "group"})] == (bob, "dave")
    assert people[frozenset({"dave0", "dave1"})] == (new[0], None)
    assert g.identities()[0].faces == 4  # dave's enrolled faces follow the named cluster
    # split by face ids; ids from the listing
    bob_faces = next(c for c in clusters.listing().clusters if c.id == bob).faces
    first = [f.id for f in bob_faces[:2]]
    (part,) = clusters.split(bob, first)
    assert sorted(f.id for c in clusters.listing().clusters if c.id == part for f in c.faces) == sorted(first)
    with pytest.raises(LookalikeError, match="not in cluster"):
        clusters.split(bob, first)
    # a face split off alone is the user's correction: the next clustering keeps it apart
    lone = next(c for c in clusters.listing().clusters if c.id == bob).faces[0].id
    (alone,) = clusters.split(bob, [lone])
    clusters.cluster()
    assert [f.id for c in clusters.listing().clusters if c.id == alone for f in c.faces] == [lone]


def test_clusters_survive_photos_that_change_or_go(indexed):
    g, photos = indexed
    clusters = FaceClusters(g, PARAMS)
    clusters.cluster()
    people = people_of(clusters)
    alice = people[frozenset({"alice0", "alice1", "alice2", "group"})][0]
    bob = people[frozenset({"bob0", "bob1", "bob2", "group"})][0]
    clusters.name(alice, "alice")
    for v in range(3):
        (photos / f"bob{v}.png").unlink()
    (photos / "alice0.png").unlink()
    save_photo(photos / "alice1.png", [ALICE], 8)  # changed: its face is found again, with a new id
    g.index_folder(photos)
    rep = clusters.cluster()
    people = people_of(clusters)
    assert people == {frozenset({"alice1", "alice2", "group"}): (alice, "alice")}
    assert rep.dropped == 1 and bob not in {c.id for c in clusters.listing().clusters}
    assert [m.identity for m in g.identify(photos / "alice2.png")] == ["alice"]
    assert [m.identity for m in g.identify(save_photo(photos.parent / "bob.png", [BOB], 4))] == [UNKNOWN]


def test_cli_cluster_json_name_merge_split(tmp_path, fake_gallery, db_url, monkeypatch):  # noqa: F811
    if db_url is not None:  # the commands' --db, from the environment
        monkeypatch.setenv("LOOKALIKE_DB_URL", db_url)
    photos = tmp_path / "photos"
    for v in range(2):
        save_photo(photos / f"alice{v}.png", [ALICE], v)
        save_photo(photos / f"bob{v}.png", [BOB], v)
    save_photo(photos / "carol.png", [CAROL], 0)
    home = tmp_path / "home"
    assert run(home, "index", photos).exit_code == 0
    r = run(home, "cluster", "--threshold", "0.6", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) == {"clusters", "unclustered"}
    assert [len(c["faces"]) for c in out["clusters"]] == [2, 2]
    assert all(c["name"] is None and isinstance(c["id"], int) for c in out["clusters"])
    face = out["clusters"][0]["faces"][0]
    assert Path(face["path"]).parent == photos.resolve() and face["box"] == [10.0, 20.0, 48.0, 48.0]
    assert [Path(f["path"]).name for f in out["unclustered"]] == ["carol.png"]
    a, b = (c["id"] for c in out["clusters"])
    r = run(home, "name", a, "alice")
    assert r.exit_code == 0 and f"cluster {a} is alice" in r.output
    assert "alice" in run(home, "identify", photos / "alice1.png").output
    text = run(home, "cluster")
    assert (
        text.exit_code == 0 and f"cluster {a}: alice, 2 faces" in text.output and "1 faces unclustered" in text.output
    )
    assert run(home, "merge", a, b).exit_code == 0
    merged = json.loads(run(home, "cluster", "--json").output)["clusters"]
    assert [(c["id"], c["name"], len(c["faces"])) for c in merged] == [(a, "alice", 4)]
    r = run(home, "split", a)
    assert r.exit_code == 0 and "new clusters" in r.output
    assert sorted(len(c["faces"]) for c in json.loads(run(home, "cluster", "--json").output)["clusters"]) == [2, 2]
    bad = run(home, "name", 999, "x")
    assert bad.exit_code == 1 and "no face cluster 999" in bad.output
    assert (home / "lookalike.db").exists() == (db_url is None)  # on PostgreSQL, nothing in SQLite


def test_default_parameters_follow_the_backend(tmp_path, db_url):
    g = open_gallery(tmp_path / "home", db_url=db_url)
    assert FaceClusters(g).params == DEFAULT_PARAMS  # sface, the default backend: tuned on its vectors
    g.configure(backend="lookalike")
    assert FaceClusters(g).params.threshold == pytest.approx(g.settings.threshold)
    FaceClusters(g).cluster(params=PARAMS)  # given parameters are kept for later runs
    assert FaceClusters(g).params == PARAMS


def test_forgetting_a_name_unnames_its_cluster(indexed):
    g, photos = indexed
    clusters = FaceClusters(g, PARAMS)
    clusters.cluster()
    alice = people_of(clusters)[frozenset({"alice0", "alice1", "alice2", "group"})][0]
    clusters.name(alice, "alice")
    assert g.forget("alice") == 4
    g.enroll("zed", [photos / "carol0.png"])  # a new identity may reuse the forgotten one's id
    assert {c.name for c in clusters.listing().clusters} == {None}
