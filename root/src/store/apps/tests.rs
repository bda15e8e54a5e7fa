use super::*;
use std::net::Ipv4Addr;

fn ip(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

fn svc(name: &str, rr: Option<&str>) -> NewService {
    NewService {
        name: name.into(),
        namespace: "test".into(),
        spec: format!("{{\"microservice_name\":\"{name}\"}}"),
        rr_ip: rr.map(ip),
        closest_ip: None,
        rr_ip_v6: None,
        closest_ip_v6: None,
    }
}

fn with_owner() -> (Store, String) {
    let mut s = Store::in_memory().unwrap();
    let u = s
        .create_user("Admin", "", "h", &["Admin".into()], None)
        .unwrap();
    (s, u.id)
}

#[test]
fn an_application_is_created_with_its_services_and_addresses() {
    let (mut s, owner) = with_owner();
    let (app, services) = s
        .create_application(
            &owner,
            "clientsrvr",
            "test",
            "demo",
            "{}",
            &[svc("curl", None), svc("nginx", Some("10.30.30.30"))],
        )
        .unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[1].rr_ip, ip("10.30.30.30"));
    let all: Vec<u32> = services
        .iter()
        .flat_map(|x| [x.rr_ip, x.closest_ip])
        .collect();
    let mut dedup = all.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), 4, "every address handed out once: {all:?}");
    assert!(all.iter().all(|a| a >> 16 == ip("10.30.0.0") >> 16));
    assert_eq!(s.services(Some(&app.id)).unwrap(), services);
    assert_eq!(s.applications(Some(&owner)).unwrap(), vec![app]);
}

#[test]
fn ipv6_addresses_come_from_their_ranges_once_each() {
    let (mut s, owner) = with_owner();
    let (_, services) = s
        .create_application(
            &owner,
            "a",
            "x",
            "",
            "{}",
            &[svc("one", None), svc("two", None)],
        )
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for sv in &services {
        let rr: std::net::Ipv6Addr = sv.rr_ip_v6.as_deref().unwrap().parse().unwrap();
        let cl: std::net::Ipv6Addr = sv.closest_ip_v6.as_deref().unwrap().parse().unwrap();
        assert_eq!(rr.segments()[..2], [0xfdff, 0x2000]);
        assert_eq!(cl.segments()[..2], [0xfdff, 0x4000]);
        assert!(seen.insert(rr) && seen.insert(cl));
    }
    let i = s.add_instance(&services[0].id).unwrap();
    let i6: std::net::Ipv6Addr = i.ip6.unwrap().parse().unwrap();
    assert_eq!(i6.segments()[0], 0xfdff);
    assert!(i6.segments()[1] < 0x0800, "inside fdff::/21");
    // Asking for a taken one is refused.
    let mut again = svc("three", None);
    again.rr_ip_v6 = services[0].rr_ip_v6.as_deref().map(|t| t.parse().unwrap());
    assert!(matches!(
        s.create_application(&owner, "b", "x", "", "{}", &[again]),
        Err(StoreError::Conflict(_))
    ));
}

#[test]
fn a_taken_rr_ip_rejects_the_whole_application() {
    let (mut s, owner) = with_owner();
    s.create_application(&owner, "a", "x", "", "{}", &[svc("one", Some("10.30.1.1"))])
        .unwrap();
    let err = s
        .create_application(
            &owner,
            "b",
            "x",
            "",
            "{}",
            &[svc("two", None), svc("three", Some("10.30.1.1"))],
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("10.30.1.1 is already in use"),
        "{err}"
    );
    assert_eq!(
        s.applications(None).unwrap().len(),
        1,
        "nothing stored from the rejected request"
    );
    assert_eq!(s.services(None).unwrap().len(), 1);
}

#[test]
fn duplicate_application_names_conflict_per_owner() {
    let (mut s, owner) = with_owner();
    s.create_application(&owner, "a", "x", "", "{}", &[])
        .unwrap();
    assert!(matches!(
        s.create_application(&owner, "a", "x", "", "{}", &[]),
        Err(StoreError::Conflict(_))
    ));
}

#[test]
fn instances_get_a_new_number_a_fresh_ip_and_a_history() {
    let (mut s, owner) = with_owner();
    let (_, services) = s
        .create_application(&owner, "a", "x", "", "{}", &[svc("web", None)])
        .unwrap();
    let sid = &services[0].id;
    let i0 = s.add_instance(sid).unwrap();
    let i1 = s.add_instance(sid).unwrap();
    assert_eq!((i0.number, i1.number), (0, 1));
    assert_ne!(i0.ip, i1.ip);
    assert!(![services[0].rr_ip, services[0].closest_ip].contains(&i0.ip.unwrap()));
    s.remove_instance(sid, 0).unwrap();
    s.remove_instance(sid, 1).unwrap();
    assert_eq!(
        s.add_instance(sid).unwrap().number,
        2,
        "a removed instance's number is never given again"
    );
    let i1 = s.add_instance(sid).unwrap();
    assert_eq!(i1.number, 3);
    s.set_instance_status(sid, 3, "CLUSTER_SCHEDULED", None, Some(3), None)
        .unwrap();
    let r = s
        .set_instance_status(sid, 3, "RUNNING", None, None, Some("pi-1"))
        .unwrap();
    assert_eq!((r.cluster, r.node.as_deref()), (Some(3), Some("pi-1")));
    let h: Vec<String> = s
        .instance_history(sid, 3)
        .unwrap()
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(h, ["REQUESTED", "CLUSTER_SCHEDULED", "RUNNING"]);
    assert!(matches!(
        s.set_instance_status(sid, 9, "RUNNING", None, None, None),
        Err(StoreError::NotFound("instance"))
    ));
}

#[test]
fn deleting_an_application_removes_services_and_instances_and_reports_them() {
    let (mut s, owner) = with_owner();
    let (app, services) = s
        .create_application(&owner, "a", "x", "", "{}", &[svc("web", None)])
        .unwrap();
    s.add_instance(&services[0].id).unwrap();
    let gone = s.delete_application(&app.id).unwrap();
    assert_eq!(gone.len(), 1);
    assert!(s.services(None).unwrap().is_empty());
    assert!(s.instances(None).unwrap().is_empty());
    assert!(matches!(
        s.application(&app.id),
        Err(StoreError::NotFound("application"))
    ));
    // Its addresses are free again.
    assert!(!s.ip_in_use(services[0].rr_ip).unwrap());
}

#[test]
fn replacing_a_spec_bumps_the_generation() {
    let (mut s, owner) = with_owner();
    let (_, services) = s
        .create_application(&owner, "a", "x", "", "{}", &[svc("web", None)])
        .unwrap();
    assert_eq!(
        s.replace_service_spec(&services[0].id, "{\"v\":2}")
            .unwrap(),
        2
    );
    assert_eq!(s.service(&services[0].id).unwrap().spec, "{\"v\":2}");
    assert!(matches!(
        s.replace_service_spec("nope", "{}"),
        Err(StoreError::NotFound("service"))
    ));
}

#[test]
fn everything_committed_is_there_after_reopening() {
    let path = super::super::tests::temp_db("reopen");
    let sid;
    {
        let mut s = Store::open(&path).unwrap();
        let u = s.create_user("Admin", "", "h", &[], None).unwrap();
        let (_, services) = s
            .create_application(&u.id, "a", "x", "", "{}", &[svc("web", None)])
            .unwrap();
        sid = services[0].id.clone();
        s.add_instance(&sid).unwrap();
        // Dropped without any shutdown step.
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.instances(Some(&sid)).unwrap().len(), 1);
}
