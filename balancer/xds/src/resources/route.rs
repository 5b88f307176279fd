//! RDS: a service's route configuration — every request to cluster of the same name.

use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};

/// Route configuration `service`: one virtual host for any authority, prefix `""` → cluster `service`.
pub fn route_configuration(service: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: service.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        service.to_string(),
                    )),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_goes_to_the_cluster_of_the_same_name() {
        let r = route_configuration("greeter");
        assert_eq!(r.name, "greeter");
        let vh = &r.virtual_hosts[0];
        assert_eq!(vh.domains, vec!["*".to_string()]);
        let Some(route::Action::Route(action)) = &vh.routes[0].action else {
            panic!("a route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster("greeter".into()))
        );
    }
}
