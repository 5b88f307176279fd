//! Starts crate `lateral-xds`'s ADS server from a running coordinator when `listen.xds` is set: every
//! configured service's weights (the same receivers `WatchWeights` streams from) become LDS/RDS/CDS/EDS for
//! Envoy and gRPC xDS clients. Everything about xDS itself lives in that crate; this file only connects it.
//!
//! A reload replaces the services and `[xds]` (not `listen.xds`, fixed at start like every listen address):
//! an added service is published at the next push, a removed one withdrawn. A stopping coordinator never
//! pushes an empty configuration: the publisher keeps a service's last snapshot when its receiver closes.
//! Built without the `xds` feature, a configuration with `listen.xds` is refused.

use std::net::SocketAddr;

use super::{CoordinatorConfig, CoordinatorHandle};
use crate::Error;

/// Checks `listen.xds` and `[xds]` (the field that is wrong, what it must hold).
pub(crate) fn validate(config: &CoordinatorConfig) -> Result<(), (String, String)> {
    if config.listen.xds.is_none() && !config.xds.listeners.is_empty() {
        return Err((
            "listen.xds".into(),
            "an address for the xDS (ADS) server, like \"127.0.0.1:18000\", since [xds] listeners are set"
                .into(),
        ));
    }
    match config
        .xds
        .validate(config.services.iter().map(|s| s.name.as_str()))
    {
        Err(lateral_xds::Error::Config { field, expected }) => return Err((field, expected)),
        Err(other) => return Err(("xds".into(), other.to_string())),
        Ok(()) => {}
    }
    if config.listen.xds.is_some() && !cfg!(feature = "xds") {
        Err((
            "listen.xds".into(),
            "unset: this coordinator was built without the `xds` feature (cargo build --features xds)"
                .into(),
        ))
    } else {
        Ok(())
    }
}

/// The running ADS server.
pub(crate) struct XdsTask {
    #[cfg(feature = "xds")]
    server: lateral_xds::XdsServer,
    #[cfg(not(feature = "xds"))]
    never: std::convert::Infallible,
}

impl XdsTask {
    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        #[cfg(feature = "xds")]
        return self.server.local_addr();
        #[cfg(not(feature = "xds"))]
        match self.never {}
    }

    /// Publishes `services` (all of them: a reload's new set) with `config`.
    pub(crate) async fn set_services(
        &self,
        handle: &CoordinatorHandle,
        config: lateral_xds::XdsConfig,
        services: Vec<String>,
    ) -> Result<(), Error> {
        #[cfg(feature = "xds")]
        {
            let mut receivers = Vec::with_capacity(services.len());
            for service in services {
                let rx = handle.subscribe(&service).await?;
                receivers.push((service, rx));
            }
            self.server
                .set_services(config, receivers)
                .map_err(|e| Error::Transport(e.to_string()))
        }
        #[cfg(not(feature = "xds"))]
        {
            let _ = (handle, config, services);
            match self.never {}
        }
    }

    /// Closes the streams; clients keep their last resources.
    pub(crate) async fn shutdown(self) {
        #[cfg(feature = "xds")]
        self.server.shutdown().await;
        #[cfg(not(feature = "xds"))]
        match self.never {}
    }
}

/// Starts the server if `listen.xds` is set, over the weights of every configured service.
pub(crate) async fn start(
    handle: &CoordinatorHandle,
    listen: Option<SocketAddr>,
    config: lateral_xds::XdsConfig,
    services: Vec<String>,
) -> Result<Option<XdsTask>, Error> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    #[cfg(feature = "xds")]
    {
        let mut receivers = Vec::with_capacity(services.len());
        for service in services {
            let rx = handle.subscribe(&service).await?;
            receivers.push((service, rx));
        }
        let server = lateral_xds::XdsServer::start(listen, config, receivers)
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Some(XdsTask { server }))
    }
    #[cfg(not(feature = "xds"))]
    {
        let _ = (handle, config, services);
        Err(Error::Transport(format!(
            "listen.xds = {listen}: this coordinator was built without the `xds` feature"
        )))
    }
}
