//! `shoal node list|describe`.

use clap::Subcommand;
use shoal::proto::{GetNodeRequest, ListNodesRequest, Node};

use crate::client::connect;
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
}

pub async fn run(address: &str, command: NodeCommand) -> anyhow::Result<()> {
    let mut clients = connect(address).await?;
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
            println!("{table}");
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
        node.state().short_name().to_owned(),
        format!("{}/{}", allocated.slots, capacity.slots),
        format!(
            "{}/{}",
            shoal::units::format_size(allocated.memory_bytes),
            shoal::units::format_size(capacity.memory_bytes)
        ),
        labels.join(","),
        output::time(&node.last_heartbeat),
    ]
}
