"""Plan cases: add, remove owned, keep foreign, refcount, no-op, port ranges, chains."""

from reconciler.model import DirectChain, DirectRule, Op, Port, RichRule, Scope, Service
from reconciler.planner import plan_all, settle_others, settle_ownership
from reconciler.view import FirewallView

PUBLIC = Scope("zone", "public")
HTTP = Service(PUBLIC, "http")
SSH = Service(PUBLIC, "ssh")
P8080 = Port(PUBLIC, "8080", "tcp")
CHAIN = DirectChain("ipv4", "filter", "FWRECON_IN")
RULE = DirectRule("ipv4", "filter", "FWRECON_IN", 0, ("-j", "ACCEPT"))


def ops_of(plans):
    return [(p.policy, op.describe()) for p in plans for op in p.ops]


def test_adds_what_is_missing():
    plans = plan_all({"web": frozenset({HTTP, P8080})}, FirewallView(), {})
    assert ops_of(plans) == [
        ("web", "+ zone public port 8080/tcp"),
        ("web", "+ zone public service http"),
    ]


def test_unchanged_world_plans_nothing():
    view = FirewallView([HTTP, P8080])
    plans = plan_all({"web": frozenset({HTTP, P8080})}, view, {HTTP: frozenset({"web"}), P8080: frozenset({"web"})})
    assert ops_of(plans) == []
    assert all(p.empty for p in plans)


def test_removes_owned_item_no_longer_wanted():
    plans = plan_all(
        {"web": frozenset({HTTP})}, FirewallView([HTTP, P8080]), {HTTP: frozenset({"web"}), P8080: frozenset({"web"})}
    )
    assert ops_of(plans) == [("web", "- zone public port 8080/tcp")]


def test_deleted_policy_removes_everything_it_owns():
    plans = plan_all({}, FirewallView([HTTP, SSH]), {HTTP: frozenset({"web"})})
    assert ops_of(plans) == [("web", "- zone public service http")]


def test_never_removes_foreign_items():
    # ssh was there before fwrecon (not owned) and the policy that wanted it is gone
    plans = plan_all({"web": frozenset()}, FirewallView([SSH]), {})
    assert ops_of(plans) == []


def test_wanted_item_already_present_is_not_owned():
    plans = plan_all({"web": frozenset({SSH})}, FirewallView([SSH]), {})
    assert ops_of(plans) == []
    assert plans[0].claims == frozenset()


def test_shared_item_removed_only_when_no_policy_wants_it():
    owned = {HTTP: frozenset({"a"})}
    plans = plan_all({"a": frozenset(), "b": frozenset({HTTP})}, FirewallView([HTTP]), owned)
    assert ops_of(plans) == []
    assert plans[1].claims == {HTTP}  # b now co-owns http
    assert plans[0].releases == {HTTP}
    # and once b lets go too, it is removed
    plans = plan_all({"b": frozenset()}, FirewallView([HTTP]), {HTTP: frozenset({"b"})})
    assert ops_of(plans) == [("b", "- zone public service http")]


def test_shared_item_is_not_removed_and_readded_in_one_run():
    # "a" sorts before "b": without settling claims first, a would remove
    # what b is about to add again.
    plans = plan_all({"b": frozenset({HTTP})}, FirewallView([HTTP]), {HTTP: frozenset({"a"})})
    assert ops_of(plans) == []


def test_owned_item_gone_by_hand_is_re_added():
    plans = plan_all({"web": frozenset({HTTP})}, FirewallView(), {HTTP: frozenset({"web"})})
    assert ops_of(plans) == [("web", "+ zone public service http")]


def test_owned_item_gone_and_unwanted_is_released_without_ops():
    plans = plan_all({"web": frozenset()}, FirewallView(), {HTTP: frozenset({"web"})})
    assert ops_of(plans) == []
    assert plans[0].releases == {HTTP}


def test_port_covered_by_a_range_counts_as_present():
    view = FirewallView([Port(PUBLIC, "8000-8100", "tcp")])
    assert ops_of(plan_all({"web": frozenset({P8080})}, view, {})) == []


def test_port_swallowed_into_foreign_range_is_released_not_cut_out():
    view = FirewallView([Port(PUBLIC, "8000-8100", "tcp")])
    plans = plan_all({}, view, {P8080: frozenset({"web"})})
    assert ops_of(plans) == []
    assert plans[0].releases == {P8080}


def test_later_policy_sees_earlier_policy_ports():
    plans = plan_all({"a": frozenset({Port(PUBLIC, "8000-8100", "tcp")}), "b": frozenset({P8080})}, FirewallView(), {})
    assert ops_of(plans) == [("a", "+ zone public port 8000-8100/tcp")]


def test_chains_added_before_rules_and_removed_after():
    plans = plan_all({"d": frozenset({CHAIN, RULE})}, FirewallView(), {})
    assert [op.describe() for op in plans[0].ops] == [
        "+ direct ipv4 filter chain FWRECON_IN",
        "+ direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
    ]
    owned = {CHAIN: frozenset({"d"}), RULE: frozenset({"d"})}
    plans = plan_all({}, FirewallView([CHAIN, RULE]), owned)
    assert [op.describe() for op in plans[0].ops] == [
        "- direct ipv4 filter FWRECON_IN priority 0 rule -j ACCEPT",
        "- direct ipv4 filter chain FWRECON_IN",
    ]


def test_chain_holding_foreign_rules_is_kept():
    foreign = DirectRule("ipv4", "filter", "FWRECON_IN", 5, ("-j", "DROP"))
    plans = plan_all({}, FirewallView([CHAIN, foreign]), {CHAIN: frozenset({"d"})})
    assert ops_of(plans) == []
    assert CHAIN not in plans[0].releases  # still ours, removed once empty


def test_removals_run_before_adds_within_a_policy():
    rule = RichRule(PUBLIC, 'rule service name="ssh" accept')
    plans = plan_all({"web": frozenset({rule})}, FirewallView([HTTP]), {HTTP: frozenset({"web"})})
    assert [op.action for op in plans[0].ops] == ["remove", "add"]


def test_plan_does_not_modify_inputs():
    view = FirewallView([HTTP])
    owned = {HTTP: frozenset({"web"})}
    plan_all({"web": frozenset({P8080})}, view, owned)
    assert view.items() == {HTTP}
    assert owned == {HTTP: frozenset({"web"})}


def test_op_inverse():
    assert Op("add", HTTP).inverse() == Op("remove", HTTP)
    assert Op("remove", HTTP).inverse() == Op("add", HTTP)


def test_nft_chain_holding_rules_is_kept():
    from reconciler.model import NftChain, NftRule

    chain = NftChain("inet", "input", "filter", "input", 0, "accept")
    other = NftRule("inet", "input", "tcp dport 1 accept")
    plans = plan_all({}, FirewallView([chain, other]), {chain: frozenset({"p"})})
    assert ops_of(plans) == []
    plans = plan_all({}, FirewallView([chain]), {chain: frozenset({"p"})})
    assert ops_of(plans) == [("p", "- nft inet fwrecon chain input { type filter hook input priority 0; policy accept; }")]


def test_items_no_backend_can_reach_are_left_alone():
    away = FirewallView([RULE], unreachable={("zone", "public")})
    plans = plan_all({"web": frozenset({HTTP, CHAIN, RULE})}, away, {SSH: frozenset({"web"}), RULE: frozenset({"web"})})
    assert ops_of(plans) == [("web", "+ direct ipv4 filter chain FWRECON_IN")]  # HTTP not added, SSH not removed
    assert plans[0].releases == frozenset()  # nor let go


# -- items held by others (another tool, an admin) ------------------------------------


def test_an_item_there_before_we_wanted_it_is_recorded_as_held_by_others():
    (plan,) = plan_all({"lab": frozenset({HTTP})}, FirewallView([HTTP]), {})
    assert plan.ops == () and plan.held == {HTTP} and not plan.empty


def test_held_by_others_is_put_back_after_a_reload_but_never_becomes_ours():
    """A reload wiped it and we are first to put it back: still theirs."""
    (plan,) = plan_all({"lab": frozenset({HTTP})}, FirewallView(), {}, {HTTP: frozenset({"lab"})})
    assert plan.ops == (Op("add", HTTP),) and plan.foreign_adds == {HTTP}
    assert settle_ownership({}, plan, list(plan.ops)) == {}
    assert settle_others({HTTP: frozenset({"lab"})}, plan) == {HTTP: frozenset({"lab"})}


def test_dropping_an_item_held_by_others_removes_only_the_record():
    (plan,) = plan_all({"lab": frozenset()}, FirewallView([HTTP]), {}, {HTTP: frozenset({"lab"})})
    assert plan.ops == () and plan.unheld == {HTTP}
    assert settle_others({HTTP: frozenset({"lab"})}, plan) == {}


def test_a_deleted_policy_drops_its_records_and_removes_nothing():
    plans = plan_all({}, FirewallView([HTTP]), {}, {HTTP: frozenset({"gone"})})
    assert [(p.policy, p.ops, p.unheld) for p in plans] == [("gone", (), frozenset({HTTP}))]


def test_right_after_a_reload_only_recorded_items_are_put_back():
    wanted = {"web": frozenset({HTTP, SSH, P8080})}
    plans = plan_all(wanted, FirewallView(), {HTTP: frozenset({"web"})}, {SSH: frozenset({"web"})}, defer_new=True)
    (plan,) = plans
    assert plan.ops == (Op("add", HTTP), Op("add", SSH)) and plan.deferred == {P8080}


def test_policies_that_only_let_go_run_first_so_a_wider_element_finds_room():
    from reconciler.model import NftElement

    wide, narrow, other = (NftElement("inet", "s", e) for e in ("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24"))
    owned = {narrow: frozenset({"c"}), other: frozenset({"b"}), HTTP: frozenset({"b"})}
    view = FirewallView([narrow, other, HTTP])
    # a widens over c's /16 (c's file is gone); b drops an element but keeps http.
    plans = plan_all({"a": frozenset({wide}), "b": frozenset({HTTP})}, view, owned)
    assert ops_of(plans) == [
        ("b", "- nft inet fwrecon set s element 192.0.2.0/24"),
        ("c", "- nft inet fwrecon set s element 10.1.0.0/16"),
        ("a", "+ nft inet fwrecon set s element 10.0.0.0/8"),
    ]
    # A policy that drops something and adds goes next: its drop may make room too.
    plans = plan_all({"a": frozenset({wide}), "b": frozenset({HTTP, SSH})}, view, owned)
    assert [p.policy for p in plans if p.ops] == ["c", "b", "a"]
    # Among those that only add, name order.
    plans = plan_all({"a": frozenset({wide}), "b": frozenset({HTTP, other, SSH})}, view, owned)
    assert [p.policy for p in plans if p.ops] == ["c", "a", "b"]


def test_by_policy_gives_each_policy_what_it_owns_and_one_owner_the_mapping_itself():
    from reconciler.planner import by_policy

    owned = {HTTP: frozenset({"a"}), SSH: frozenset({"a", "b"}), P8080: frozenset({"b"})}
    assert by_policy(owned) == {"a": {HTTP: owned[HTTP], SSH: owned[SSH]}, "b": {SSH: owned[SSH], P8080: owned[P8080]}}
    alone = {HTTP: frozenset({"a"}), SSH: frozenset({"a"})}
    assert by_policy(alone)["a"] is alone and by_policy({}) == {}


def test_a_policy_is_planned_on_what_it_owns_beside_many_others():
    # 50 policies beside one that owns 2,000 items: each removes only its own dropped item, in order.
    from reconciler.model import NftElement

    big = {NftElement("inet", "s", f"10.0.{i // 256}.{i % 256}") for i in range(2000)}
    smalls = {f"p{k:02}": NftElement("inet", "s", f"172.16.0.{k}") for k in range(50)}
    owned = {item: frozenset({"big"}) for item in big} | {item: frozenset({name}) for name, item in smalls.items()}
    view = FirewallView([*big, *smalls.values()])
    wanted = {"big": frozenset(big)} | {
        name: frozenset() if name == "p07" else frozenset({item}) for name, item in smalls.items()
    }
    plans = plan_all(wanted, view, owned)
    assert ops_of(plans) == [("p07", "- nft inet fwrecon set s element 172.16.0.7")]
