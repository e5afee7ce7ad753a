//! `shoal node list|describe|cordon|uncordon|drain`.

use clap::Subcommand;
use shoal::proto::{
    CordonRequest, DrainRequest, GetNodeRequest, ListNodesRequest, Node, UncordonRequest,
};

use crate::client::{Target, connect};
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List executors.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one executor.
    Describe {
        id: String,
        #[arg(long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Take no new work on an executor; what runs there goes on.
    Cordon { id: String },
    /// Let a cordoned executor take work again.
    Uncordon { id: String },
    /// Cordon an executor and wait for its executions to finish; those still running after
    /// the grace period are stopped and retried elsewhere.
    Drain {
        id: String,
        /// How long running executions may go on, e.g. 10m (0: stop them at once).
        #[arg(long, default_value = "5m", value_parser = shoal::spec::units::parse_duration)]
        grace: std::time::Duration,
    },
}

pub async fn run(target: &Target, command: NodeCommand) -> anyhow::Result<()> {
    let mut clients = connect(target).await?;
    match command {
        NodeCommand::List { output } => {
            let nodes = clients
                .nodes
                .list_nodes(ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            if output != Format::Table {
                return output::print_structured(output, &nodes);
            }
            let mut table =
                output::table(&["ID", "STATE", "SLOTS", "MEMORY", "LABELS", "LAST HEARTBEAT"]);
            for node in &nodes {
                table.add_row(row(node));
            }
            crate::outln!("{table}");
        }
        NodeCommand::Describe { id, output } => {
            let node = clients
                .nodes
                .get_node(GetNodeRequest { node_id: id })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            let format = if output == Format::Table {
                Format::Yaml
            } else {
                output
            };
            output::print_one(format, &node)?;
        }
        NodeCommand::Cordon { id } => {
            clients
                .nodes
                .cordon(CordonRequest {
                    node_id: id.clone(),
                })
                .await?;
            crate::outln!("{id} cordoned");
        }
        NodeCommand::Uncordon { id } => {
            clients
                .nodes
                .uncordon(UncordonRequest {
                    node_id: id.clone(),
                })
                .await?;
            crate::outln!("{id} uncordoned");
        }
        NodeCommand::Drain { id, grace } => {
            crate::errln!(
                "draining {id}: waiting up to {} for its executions",
                shoal::spec::units::format_duration(grace)
            );
            let drained = clients
                .nodes
                .drain(DrainRequest {
                    node_id: id.clone(),
                    grace: prost_types::Duration::try_from(grace).ok(),
                })
                .await?
                .into_inner();
            crate::outln!(
                "{id} drained: {} execution(s) finished, {} stopped and requeued",
                drained.finished,
                drained.evicted
            );
        }
    }
    Ok(())
}

fn row(node: &Node) -> Vec<String> {
    let capacity = node.capacity.unwrap_or_default();
    let allocated = node.allocated.unwrap_or_default();
    let mut labels: Vec<_> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    vec![
        node.id.clone(),
        if node.cordoned {
            format!("{},CORDONED", node.state().short_name())
        } else {
            node.state().short_name().to_owned()
        },
        format!("{}/{}", allocated.slots, capacity.slots),
        format!(
            "{}/{}",
            shoal::spec::units::format_size(allocated.memory_bytes),
            shoal::spec::units::format_size(capacity.memory_bytes)
        ),
        labels.join(","),
        output::time(&node.last_heartbeat),
    ]
}
