//! The pool planner: a pure function from the desired counts and the hosts' slots to the
//! repurposings that bring each role to its count.
//!
//! * A slot **counts** for its role while it runs (or is being recovered: queued,
//!   diagnosing, in maintenance); a slot **held** for forensics, stopped or failed counts
//!   as missing and is never a donor; a slot being repurposed counts for its new role.
//! * **Donors** are spare slots (running their default image) first, then slots of roles
//!   above their desired count — and of those only ones that stayed in their role for the
//!   minimum dwell time, so a role that just got a slot does not give it away again.
//! * The planner never plans a role above its count, plans nothing for a role without an
//!   image, and breaks ties deterministically: roles by name; for each slot to fill, the
//!   donor on the host with the fewest slots of that role already, then by host and guest
//!   — so a role spreads over hosts, and the same input always gives the same plan.

use std::collections::{BTreeMap, BTreeSet};

/// What the planner needs to know of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Running and not being changed: counts, may donate.
    Ready,
    /// Counts for its role but may not donate: being repurposed, or recovering after a
    /// failure (queued, diagnosing, maintenance).
    Busy,
    /// Held for forensics, stopped or failed: missing from its role, never a donor.
    Missing,
}

impl SlotState {
    /// The state of a guest as a host's health names it (`running`, `held`, …).
    pub fn of(state: &str, repurposing: bool) -> SlotState {
        match state {
            _ if repurposing => SlotState::Busy,
            "running" => SlotState::Ready,
            "queued" | "diagnosing" | "maintenance" => SlotState::Busy,
            _ => SlotState::Missing,
        }
    }
}

/// One slot, on an available host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The host.
    pub host: String,
    /// The guest.
    pub guest: String,
    /// Its role (None: its default image — a spare).
    pub role: Option<String>,
    /// Its state.
    pub state: SlotState,
    /// When its role last changed (ms since the epoch).
    pub since_ms: i64,
}

/// A repurposing: planned, or under way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Move {
    /// The host.
    pub host: String,
    /// The slot.
    pub guest: String,
    /// Its role now (None: spare).
    pub from: Option<String>,
    /// The role it gets.
    pub role: String,
    /// The image it boots.
    pub digest: String,
}

/// The planner's input.
#[derive(Clone, Debug, Default)]
pub struct Input {
    /// Role → desired count.
    pub desired: BTreeMap<String, u32>,
    /// Role → the image it boots (roles without one cannot be planned).
    pub images: BTreeMap<String, String>,
    /// The slots of the available hosts (a host that is not available has none here).
    pub slots: Vec<Slot>,
    /// Repurposings under way (their slots are neither counted for their old role nor
    /// donors; they count for their new role).
    pub in_flight: Vec<Move>,
    /// Now (ms since the epoch).
    pub now_ms: i64,
    /// How long a slot stays in a role before it may be given to another.
    pub min_dwell_ms: i64,
}

/// The planner's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The repurposings to start, in order.
    pub moves: Vec<Move>,
    /// Role → slots counting for it now (ready or busy, not being repurposed away).
    pub actual: BTreeMap<String, u32>,
    /// Spare slots that are ready.
    pub spare: u32,
    /// Role → its slots held, stopped or failed.
    pub missing: BTreeMap<String, u32>,
    /// Why some of a role's count could not be planned.
    pub blocked: Vec<String>,
}

fn key(s: &Slot) -> (String, String) {
    (s.host.clone(), s.guest.clone())
}

/// Plans the repurposings that bring each role to its desired count. Pure: the same input
/// gives the same plan.
pub fn plan(input: &Input) -> Plan {
    let moving: BTreeSet<(String, String)> = input
        .in_flight
        .iter()
        .map(|m| (m.host.clone(), m.guest.clone()))
        .collect();
    let mut out = Plan::default();
    // Roles per host (for spreading), counted over slots that count and moves under way.
    let mut per_host: BTreeMap<(String, String), u32> = BTreeMap::new();
    for s in &input.slots {
        let in_flight = moving.contains(&key(s));
        match (&s.role, s.state) {
            (Some(r), SlotState::Missing) if !in_flight => {
                *out.missing.entry(r.clone()).or_default() += 1;
            }
            (Some(r), _) if !in_flight => {
                *out.actual.entry(r.clone()).or_default() += 1;
                *per_host.entry((s.host.clone(), r.clone())).or_default() += 1;
            }
            (None, SlotState::Ready) if !in_flight => out.spare += 1,
            _ => {}
        }
    }
    let mut have = out.actual.clone();
    for m in &input.in_flight {
        *have.entry(m.role.clone()).or_default() += 1;
        *per_host
            .entry((m.host.clone(), m.role.clone()))
            .or_default() += 1;
    }
    // Donors: spares, then slots of roles above their count that dwelt long enough.
    let mut spares: Vec<&Slot> = input
        .slots
        .iter()
        .filter(|s| s.role.is_none() && s.state == SlotState::Ready && !moving.contains(&key(s)))
        .collect();
    let mut surplus: BTreeMap<String, u32> = have
        .iter()
        .filter_map(|(r, n)| {
            let want = input.desired.get(r).copied().unwrap_or(0);
            (*n > want).then(|| (r.clone(), n - want))
        })
        .collect();
    let mut extra: Vec<&Slot> = input
        .slots
        .iter()
        .filter(|s| {
            s.state == SlotState::Ready
                && !moving.contains(&key(s))
                && s.role.as_ref().is_some_and(|r| surplus.contains_key(r))
                && input.now_ms.saturating_sub(s.since_ms) >= input.min_dwell_ms
        })
        .collect();
    for (role, want) in &input.desired {
        let got = have.get(role).copied().unwrap_or(0);
        let need = want.saturating_sub(got);
        if need == 0 {
            continue;
        }
        let Some(digest) = input.images.get(role) else {
            out.blocked.push(format!(
                "role {role}: {need} short, and the library has no image for it"
            ));
            continue;
        };
        for n in 0..need {
            let pick = |list: &[&Slot], per_host: &BTreeMap<(String, String), u32>| {
                list.iter()
                    .enumerate()
                    .min_by_key(|(_, s)| {
                        (
                            per_host
                                .get(&(s.host.clone(), role.clone()))
                                .copied()
                                .unwrap_or(0),
                            s.host.clone(),
                            s.guest.clone(),
                        )
                    })
                    .map(|(i, _)| i)
            };
            let donor = if let Some(i) = pick(&spares, &per_host) {
                spares.remove(i)
            } else {
                // Only roles still above their count may give.
                extra.retain(|s| {
                    s.role
                        .as_ref()
                        .is_some_and(|r| surplus.get(r).is_some_and(|n| *n > 0))
                });
                match pick(&extra, &per_host) {
                    Some(i) => {
                        let s = extra.remove(i);
                        if let Some(r) = &s.role {
                            if let Some(n) = surplus.get_mut(r) {
                                *n -= 1;
                            }
                            if let Some(c) = per_host.get_mut(&(s.host.clone(), r.clone())) {
                                *c = c.saturating_sub(1);
                            }
                        }
                        s
                    }
                    None => {
                        out.blocked.push(format!(
                            "role {role}: {} short, and no spare slot or slot of a role above \
                             its count is free to give (held and failed slots never are; a \
                             slot gives only after the minimum dwell time)",
                            need - n
                        ));
                        break;
                    }
                }
            };
            *per_host
                .entry((donor.host.clone(), role.clone()))
                .or_default() += 1;
            out.moves.push(Move {
                host: donor.host.clone(),
                guest: donor.guest.clone(),
                from: donor.role.clone(),
                role: role.clone(),
                digest: digest.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(host: &str, guest: &str, role: Option<&str>, state: SlotState) -> Slot {
        Slot {
            host: host.into(),
            guest: guest.into(),
            role: role.map(str::to_string),
            state,
            since_ms: 0,
        }
    }

    fn input(desired: &[(&str, u32)], slots: Vec<Slot>) -> Input {
        Input {
            desired: desired.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            images: [("web", "aa"), ("batch", "bb"), ("db", "cc")]
                .iter()
                .map(|(r, d)| (r.to_string(), d.to_string()))
                .collect(),
            slots,
            in_flight: vec![],
            now_ms: 1_000_000,
            min_dwell_ms: 10_000,
        }
    }

    fn all_spare(hosts: usize, per: usize) -> Vec<Slot> {
        let mut v = vec![];
        for h in 1..=hosts {
            for g in 1..=per {
                v.push(slot(
                    &format!("host-{h}"),
                    &format!("s{g}"),
                    None,
                    SlotState::Ready,
                ));
            }
        }
        v
    }

    /// Applies a plan: its slots take their new roles, ready, now.
    fn apply(i: &Input, p: &Plan) -> Input {
        let mut next = i.clone();
        for m in &p.moves {
            let s = next
                .slots
                .iter_mut()
                .find(|s| s.host == m.host && s.guest == m.guest)
                .unwrap();
            s.role = Some(m.role.clone());
            s.state = SlotState::Ready;
            s.since_ms = i.now_ms;
        }
        next
    }

    #[test]
    fn from_all_spare_each_role_spreads_over_hosts() {
        let i = input(&[("web", 2), ("batch", 1)], all_spare(3, 2));
        let p = plan(&i);
        let got: Vec<_> = p
            .moves
            .iter()
            .map(|m| (m.role.as_str(), m.host.as_str(), m.guest.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("batch", "host-1", "s1"),
                ("web", "host-1", "s2"),
                ("web", "host-2", "s1")
            ]
        );
        assert!(plan(&apply(&i, &p)).moves.is_empty());
    }

    #[test]
    fn a_held_slot_is_missing_and_a_spare_replaces_it() {
        let i = input(
            &[("web", 2)],
            vec![
                slot("h1", "a", Some("web"), SlotState::Missing),
                slot("h1", "b", Some("web"), SlotState::Ready),
                slot("h2", "a", None, SlotState::Ready),
            ],
        );
        let p = plan(&i);
        assert_eq!(p.missing["web"], 1);
        assert_eq!(p.moves.len(), 1);
        assert_eq!(
            (p.moves[0].host.as_str(), p.moves[0].guest.as_str()),
            ("h2", "a")
        );
    }

    #[test]
    fn over_count_roles_give_only_after_dwelling() {
        let mut i = input(
            &[("web", 0), ("batch", 1)],
            vec![slot("h1", "a", Some("web"), SlotState::Ready)],
        );
        i.slots[0].since_ms = i.now_ms - 5_000;
        let p = plan(&i);
        assert!(p.moves.is_empty() && p.blocked.len() == 1, "{p:?}");
        i.slots[0].since_ms = i.now_ms - 10_000;
        let p = plan(&i);
        assert_eq!(p.moves[0].from.as_deref(), Some("web"));
        assert_eq!(p.moves[0].role, "batch");
    }

    #[test]
    fn no_image_no_plan() {
        let mut i = input(&[("web", 1)], all_spare(1, 1));
        i.images.clear();
        let p = plan(&i);
        assert!(p.moves.is_empty());
        assert!(p.blocked[0].contains("no image"), "{:?}", p.blocked);
    }

    fn arb_input() -> impl Strategy<Value = Input> {
        let roles = prop_oneof![
            Just(None),
            Just(Some("web")),
            Just(Some("batch")),
            Just(Some("db"))
        ];
        let state = prop_oneof![
            Just(SlotState::Ready),
            Just(SlotState::Busy),
            Just(SlotState::Missing)
        ];
        let slots = prop::collection::vec((0..4usize, roles, state, 0..30_000i64), 0..14);
        let desired = prop::collection::btree_map(
            prop_oneof![Just("web"), Just("batch"), Just("db"), Just("cache")],
            0..6u32,
            0..4,
        );
        (
            slots,
            desired,
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        )
            .prop_map(|(slots, desired, moving)| {
                let slots: Vec<Slot> = slots
                    .into_iter()
                    .enumerate()
                    .map(|(n, (h, r, st, age))| Slot {
                        host: format!("h{h}"),
                        guest: format!("g{n}"),
                        role: r.map(str::to_string),
                        state: st,
                        since_ms: 100_000 - age,
                    })
                    .collect();
                let mut i = input(&[], slots);
                i.now_ms = 100_000;
                i.desired = desired
                    .into_iter()
                    .map(|(r, n)| (r.to_string(), n))
                    .collect();
                let mut seen = BTreeSet::new();
                for ix in moving {
                    if i.slots.is_empty() {
                        break;
                    }
                    let s = &i.slots[ix.index(i.slots.len())];
                    if seen.insert(key(s)) {
                        i.in_flight.push(Move {
                            host: s.host.clone(),
                            guest: s.guest.clone(),
                            from: s.role.clone(),
                            role: "web".into(),
                            digest: "aa".into(),
                        });
                    }
                }
                i
            })
    }

    fn counts(i: &Input) -> BTreeMap<String, u32> {
        let p = plan(i);
        let mut have = p.actual.clone();
        for m in &i.in_flight {
            *have.entry(m.role.clone()).or_default() += 1;
        }
        have
    }

    proptest! {
        #[test]
        fn never_plans_a_role_above_its_count(i in arb_input()) {
            let p = plan(&i);
            let have = counts(&i);
            let mut planned: BTreeMap<String, u32> = BTreeMap::new();
            let mut taken: BTreeMap<String, u32> = BTreeMap::new();
            for m in &p.moves {
                *planned.entry(m.role.clone()).or_default() += 1;
                if let Some(r) = &m.from { *taken.entry(r.clone()).or_default() += 1; }
            }
            for (r, n) in &planned {
                let want = i.desired.get(r).copied().unwrap_or(0);
                let had = have.get(r).copied().unwrap_or(0);
                prop_assert!(had + n <= want, "{r}: had {had}, planned {n}, want {want}");
            }
            // And a donor role never drops below its count.
            for (r, n) in &taken {
                let want = i.desired.get(r).copied().unwrap_or(0);
                let had = have.get(r).copied().unwrap_or(0);
                prop_assert!(had - n >= want, "{r}: had {had}, gave {n}, want {want}");
            }
        }

        #[test]
        fn never_picks_a_held_busy_or_moving_slot_and_each_slot_once(i in arb_input()) {
            let p = plan(&i);
            let mut used = BTreeSet::new();
            for m in &p.moves {
                let s = i.slots.iter().find(|s| s.host == m.host && s.guest == m.guest).unwrap();
                prop_assert_eq!(s.state, SlotState::Ready);
                prop_assert!(!i.in_flight.iter().any(|f| f.host == m.host && f.guest == m.guest));
                prop_assert!(used.insert((m.host.clone(), m.guest.clone())));
                prop_assert_eq!(&m.from, &s.role);
                prop_assert_eq!(Some(&m.digest), i.images.get(&m.role));
            }
        }

        #[test]
        fn reaches_the_desired_counts_when_enough_slots_can_give(i in arb_input()) {
            let p = plan(&i);
            let have = counts(&i);
            let need: u32 = i.desired.iter()
                .filter(|(r, _)| i.images.contains_key(*r))
                .map(|(r, w)| w.saturating_sub(have.get(r).copied().unwrap_or(0)))
                .sum();
            let eligible_surplus: u32 = have.iter().map(|(r, n)| {
                let want = i.desired.get(r).copied().unwrap_or(0);
                let free = i.slots.iter().filter(|s| s.role.as_ref() == Some(r)
                    && s.state == SlotState::Ready
                    && !i.in_flight.iter().any(|f| f.host == s.host && f.guest == s.guest)
                    && i.now_ms - s.since_ms >= i.min_dwell_ms).count() as u32;
                n.saturating_sub(want).min(free)
            }).sum();
            if need <= p.spare + eligible_surplus {
                let after = apply(&i, &p);
                let have_after = counts(&Input { in_flight: i.in_flight.clone(), ..after });
                for (r, w) in &i.desired {
                    if i.images.contains_key(r) {
                        prop_assert!(have_after.get(r).copied().unwrap_or(0) >= *w,
                            "{r}: want {w}, have {:?} after {:?}", have_after.get(r), p.moves);
                    }
                }
            }
        }

        #[test]
        fn is_stable_when_nothing_changes(i in arb_input()) {
            prop_assert_eq!(plan(&i), plan(&i));
            let p = plan(&i);
            // Once the plan is carried out, nothing more is planned (until something changes).
            let after = apply(&i, &p);
            let again = plan(&after);
            prop_assert!(again.moves.is_empty(), "{:?} then {:?}", p, again);
        }
    }
}
