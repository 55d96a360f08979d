// Customer Insights segments -> Omnisend exporter: everything the Functions app needs, identity-only.
//
// Resource-group scope so the same file serves `azd up` and plain `az deployment group create`.
// Raw resources (no registry modules) so tests/infra and checkov can read the whole template offline.
// No keys, connection strings or secret values anywhere: storage has shared-key access off, App Insights has
// local auth off, and the Omnisend API key is put into Key Vault by a person after deployment.
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd sets it); part of every generated resource name.')
param environmentName string

@description('Azure region for every resource. Must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Optional: object id of the person (or pipeline) deploying. Gets Key Vault Secrets Officer on the vault (to set the Omnisend key) and Storage Blob Data Contributor on the config container (to upload exports.json). Empty = grant nothing.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Kind of principal that principalId names. azd passes AZURE_PRINCIPAL_TYPE (default User); a pipeline signed in as a service principal must `azd env set AZURE_PRINCIPAL_TYPE ServicePrincipal`, or its role assignments fail with UnmatchedPrincipalType.')
param principalType string = 'User'

@description('Optional: object id of the Customer Insights service principal in this tenant (`az ad sp show --id 0bfc4568-a4ba-4c58-bd3e-5d3e76bd7fff --query id -o tsv`). When set and the export container is in the app account, it gets Storage Blob Data Contributor on that container and Storage Blob Delegator on the account, so Customer Insights can export into it. Empty = grant nothing.')
param customerInsightsPrincipalId string = ''

// Run artifacts (batches with contact payloads, results, reports, rejected.csv) hold personal data: they expire.
@minValue(1)
@maxValue(3650)
@description('Days after which run artifacts (the whole exporter-runs container) are deleted by a storage lifecycle rule; also RUN_RETENTION_DAYS for the app. The membership state (exporter-state) never expires.')
param runRetentionDays int = 30

@description('Optional: e-mail address that the alerts (a run that needs someone, an export that stopped succeeding) are sent to. Empty = the alerts still fire and show in the portal, but nobody is e-mailed.')
param alertEmail string = ''

// The staleness alert looks back 2 days (overrideQueryTimeRange P2D) to see which exports the timer considers
// enabled, so the threshold must stay below that.
@minValue(1)
@maxValue(47)
@description('Hours without a succeeded run of an enabled export before the "export stopped succeeding" alert fires. Set it above the Customer Insights refresh interval (26 = a daily refresh plus two hours).')
param staleAfterHours int = 26

@minValue(0)
@maxValue(100)
@description('A run that ended partial alerts when more than this percentage of the contacts it tried to send failed. failed and held runs always alert.')
param partialFailedPercent int = 1

@allowed([
  512
  2048
  4096
])
@description('Memory of each Flex Consumption instance in MB. 2048 is the Flex default; the app streams segments, so 512 is usually enough for small segments.')
param instanceMemoryMB int = 2048

// Default 1 = the smallest maximum Flex allows (the 2024 preview floor was 40; the current docs say 1).
// Flex applies this cap to each per-function scale group. It is not an input to the Omnisend budget: every instance
// takes its request slots from one reservation blob (shared/budget.py), so more instances never add Omnisend
// traffic and fewer still use the whole budget. docs/deploy.md ("Scale and the Omnisend budget").
@minValue(1)
@maxValue(1000)
@description('Flex maximumInstanceCount (per function scale group). See docs/deploy.md.')
param maximumInstanceCount int = 1

@description('Name of the Key Vault secret that holds the Omnisend API key (the value is set after deployment, never here).')
param omnisendApiKeySecretName string = 'omnisend-api-key'

@allowed([
  '2026-03-15'
  'v3'
])
@description('Omnisend API version the app talks.')
param omnisendApiVersion string = '2026-03-15'

// Omnisend allows 400 requests/minute per brand, shared by every integration of that brand.
@minValue(1)
@maxValue(400)
@description('Requests per minute this app may use of the brand-wide Omnisend budget (400/min).')
param omnisendRequestsPerMinute int = 300

@description('NCRONTAB schedule (six fields, UTC) of the timer that starts every enabled export.')
param exportSchedule string = '0 5 * * * *'

@description('Optional: application (client) id of the Entra ID app registration that protects the HTTP API (App Service Authentication). Its app roles Exports.Admin, Exports.Operator and Exports.Reader decide who may do what (docs/deploy.md). Empty = no authentication in front of the app: a function key alone acts as Exports.Admin, as before.')
param authClientId string = ''

@description('With authClientId set: whether a request that carries only a function key (automation, no signed-in principal) acts as Exports.Admin. false = every caller needs a token with an app role (unauthenticated requests get 401).')
param allowFunctionKeyAdmin bool = false

@minLength(3)
@maxLength(63)
@description('Blob container that Customer Insights exports segments into.')
param ciExportContainerName string = 'ciexports'

@description('Optional: name of an EXISTING storage account that holds the Customer Insights export container. Empty = create the container in the app storage account.')
param ciExportStorageAccountName string = ''

@description('Resource group of ciExportStorageAccountName (same subscription). Empty = this resource group.')
param ciExportStorageAccountResourceGroup string = ''

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
@description('Replication of the app storage account. LRS works in every Flex region; choose ZRS/GZRS where the region offers it.')
param storageSkuName string = 'Standard_LRS'

@description('Tags added to every resource.')
param tags object = {}

// Name overrides: empty = abbreviation + a token unique to subscription, resource group, environment and region.
@description('Override: user-assigned managed identity name.')
param identityName string = ''
@maxLength(24)
@description('Override: app storage account name (3-24 lowercase letters and digits, globally unique).')
param storageAccountName string = ''
@maxLength(24)
@description('Override: Key Vault name (3-24 characters, globally unique).')
param keyVaultName string = ''
@description('Override: Log Analytics workspace name.')
param logAnalyticsName string = ''
@description('Override: Application Insights name.')
param applicationInsightsName string = ''
@description('Override: Flex Consumption plan name.')
param appServicePlanName string = ''
@description('Override: function app name (globally unique; becomes <name>.azurewebsites.net).')
param functionAppName string = ''

// ---------------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var allTags = union(tags, { 'azd-env-name': environmentName })

var identityResourceName = !empty(identityName) ? identityName : '${abbrs.managedIdentity}${resourceToken}'
var storageResourceName = !empty(storageAccountName) ? storageAccountName : '${abbrs.storageAccount}${resourceToken}'
var keyVaultResourceName = !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVault}${resourceToken}'
var logAnalyticsResourceName = !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.logAnalyticsWorkspace}${resourceToken}'
var appInsightsResourceName = !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.applicationInsights}${resourceToken}'
var planResourceName = !empty(appServicePlanName) ? appServicePlanName : '${abbrs.appServicePlan}${resourceToken}'
var functionAppResourceName = !empty(functionAppName) ? functionAppName : '${abbrs.functionApp}${resourceToken}'

// Container and queue names must match shared/names.py and the bindings in function_app.py (tests/infra checks).
var deploymentContainerName = 'app-package' // Flex deployment package (written by azd / func publish).
var runsContainerName = 'exporter-runs' // names.RUNS_CONTAINER: run artifacts (batches, results, reports); may expire.
var stateContainerName = 'exporter-state' // names.STATE_CONTAINER: per-export membership state; never expires.
var configContainerName = 'exporter-config' // names.CONFIG_CONTAINER: exports.json.
var exportsConfigBlobName = 'exports.json'
// App Service Authentication in front of the HTTP API when an app registration is named (shared/management/access.py).
var authEnabled = !empty(authClientId)
// names.STAGE_QUEUES, then each with names.POISON_SUFFIX. Poison queues are created up front so their
// handlers' triggers start cleanly and the queues can be watched before the first failure.
var queueNames = [
  'export-plan'
  'export-send'
  'export-verify'
  'export-finalise'
  'export-plan-poison'
  'export-send-poison'
  'export-verify-poison'
  'export-finalise-poison'
]

// Customer Insights export container: in the app account unless an existing account is named.
var useExternalCiAccount = !empty(ciExportStorageAccountName)
// Empty also when azd passes an unset CI_EXPORT_STORAGE_ACCOUNT_RESOURCE_GROUP through main.parameters.json.
var ciExportResourceGroupName = !empty(ciExportStorageAccountResourceGroup) ? ciExportStorageAccountResourceGroup : resourceGroup().name
// Customer Insights is granted write access only on a container this template creates (not in an external account).
var grantCustomerInsights = (!empty(customerInsightsPrincipalId)) && (!useExternalCiAccount) // parenthesised for pycep (tests/infra)
var sourceBlobServiceUri = useExternalCiAccount ? 'https://${ciExportStorageAccountName}.blob.${environment().suffixes.storage}/' : storage.properties.primaryEndpoints.blob

// ---------------------------------------------------------------------------------------------------------------
// Role definitions (built-in role GUIDs). Least privilege: data-plane roles only, each on the narrowest scope.
// ---------------------------------------------------------------------------------------------------------------

// Storage Blob Data Owner: the Functions host (leases, timer locks, host keys), the Flex deployment package and the
// run state all live in the app account's blobs; the host needs Owner for identity-based AzureWebJobsStorage.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Queue Data Contributor: read/delete stage messages (triggers), send the next stage's and poison messages.
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
// Key Vault Secrets User: read (only) the Omnisend API key.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
// Monitoring Metrics Publisher: send telemetry to Application Insights with Entra auth (local auth is off).
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'
// Key Vault Secrets Officer (optional deploying principal only): set the Omnisend key after deployment.
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
// Storage Blob Data Contributor: the optional deploying principal (config container: upload exports.json; export
// container: set up and inspect the Customer Insights connection) and Customer Insights (write its exports).
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
// Storage Blob Delegator (Customer Insights only, on the account): with a container-scoped data role, Customer
// Insights also needs to get a user delegation key, which is an account-level action (Microsoft's export docs).
var storageBlobDelegatorRoleId = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
// No Storage Table Data Contributor: the app uses no tables and the template sets no table endpoint for the host.

// ---------------------------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityResourceName
  location: location
  tags: allTags
}

// ---------------------------------------------------------------------------------------------------------------
// Storage: host storage, Flex package, run state, config, stage queues (and the CI export container by default)
// ---------------------------------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet in this template; the Flex app and Customer Insights use the public endpoint, and access is Entra-only (shared keys off)
  // checkov:skip=CKV_AZURE_59:Public endpoint is needed without a VNet (as CKV_AZURE_35); anonymous blob access and shared keys are both off
  // checkov:skip=CKV_AZURE_206:LRS default exists in every Flex region; storageSkuName selects ZRS/GZRS where the region has them
  // checkov:skip=CKV_AZURE_43:Name is computed (abbreviation + uniqueString: 15 lowercase letters and digits), which the rule cannot evaluate
  name: storageResourceName
  location: location
  tags: allTags
  kind: 'StorageV2'
  sku: {
    name: storageSkuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false // nothing here is public
    allowSharedKeyAccess: false // identity only: no account keys, no SAS, no connection strings
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true // portal and tools use Entra by default
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled' // no VNet: the Flex app and Customer Insights come in over the public endpoint
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Blob soft delete OFF on purpose: Customer Insights exports fail into an account that has it on, and by default
    // the CI export container lives in this account. Run state is protected by create-if-absent markers instead.
    deleteRetentionPolicy: {
      enabled: false
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource runsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: runsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource stateContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: stateContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource configContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: configContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource ciExportContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (!useExternalCiAccount) {
  parent: blobService
  name: ciExportContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

// ---------------------------------------------------------------------------------------------------------------
// Key Vault: holds the Omnisend API key (set out of band; never in this template or its outputs)
// ---------------------------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:No VNet in this template, so the app reaches the vault's public endpoint; every call still needs an Entra token and an RBAC role
  // checkov:skip=CKV_AZURE_189:Public network access is needed without a VNet (as CKV_AZURE_109)
  name: keyVaultResourceName
  location: location
  tags: allTags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true // roles, not access policies
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true // a deleted key cannot be purged before retention ends
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Monitoring: workspace-based Application Insights with local (key) auth off
// ---------------------------------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsResourceName
  location: location
  tags: allTags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsResourceName
  location: location
  tags: allTags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true // ingestion needs an Entra token (Monitoring Metrics Publisher), not the key
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Flex Consumption plan + Linux Python 3.11 function app
// ---------------------------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex zone redundancy exists only in some regions; a batch exporter retries from queues after a zone outage
  name: planResourceName
  location: location
  tags: allTags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:No VNet in this template; the HTTP trigger is reached over HTTPS and needs a function key
  // checkov:skip=CKV_AZURE_17:Callers authenticate with a function key, not client certificates
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales per event; a minimum instance count for failover does not apply
  // checkov:skip=CKV_AZURE_213:Flex Consumption has no platform health-check probe; GET /api/health (function key) is called by the operator and the deploy guide
  // checkov:skip=CKV_AZURE_78:Flex rejects siteConfig.ftpsState (ARM 51021); FTP publishing is off via basicPublishingCredentialsPolicies/ftp
  name: functionAppResourceName
  location: location
  tags: union(allTags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id // if a Key Vault reference is ever used, resolve it as the app identity
    siteConfig: {
      minTlsVersion: '1.2'
      // No ftpsState: Flex Consumption rejects it (ARM error 51021); FTP is off through basicPublishingCredentialsPolicies/ftp.
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    // Flex validates the deployment container when the site is created.
    deploymentContainer
  ]
}

// Exactly the settings the code reads (shared/settings.py ENV_NAMES minus LOCAL_ONLY_SETTINGS) plus the host's own
// (HOST_SETTINGS). tests/infra/test_bicep.py fails on any missing or extra key. No secrets: storage and telemetry are
// identity-based, and the Omnisend key is read from Key Vault at run time.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13:Rule for site web config misapplied to appsettings; App Service auth would also block the function-key HTTP call
  // checkov:skip=CKV_AZURE_63:Rule for site web config (HTTP logging) misapplied to appsettings; requests are logged to Application Insights
  // checkov:skip=CKV_AZURE_65:Rule for site web config (detailed errors) misapplied to appsettings; errors go to Application Insights
  // checkov:skip=CKV_AZURE_66:Rule for site web config (failed request tracing) misapplied to appsettings; traces go to Application Insights
  // checkov:skip=CKV_AZURE_80:Rule for .NET apps misapplied to appsettings; this is a Python 3.11 app
  // checkov:skip=CKV_AZURE_88:Azure Files content share is not used (or supported) by Flex Consumption; the package lives in blob storage
  // checkov:skip=CKV_AZURE_222:Rule for the site misapplied to appsettings; see the suppression on functionApp
  parent: functionApp
  name: 'appsettings'
  properties: {
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identity.properties.clientId
    AZURE_CLIENT_ID: identity.properties.clientId // DefaultAzureCredential in our SDK calls picks the user-assigned identity
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString // locates the resource; carries no usable credential with local auth off
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
    EXPORT_SCHEDULE: exportSchedule
    EXPORTS_CONFIG: 'blob:${configContainerName}/${exportsConfigBlobName}'
    SOURCE_BLOB_SERVICE_URI: sourceBlobServiceUri
    KEY_VAULT_URL: keyVault.properties.vaultUri
    OMNISEND_API_KEY_SECRET_NAME: omnisendApiKeySecretName
    OMNISEND_API_VERSION: omnisendApiVersion
    OMNISEND_REQUESTS_PER_MINUTE: string(omnisendRequestsPerMinute)
    // The code's own expiry of run artifacts agrees with the lifecycle rule below.
    RUN_RETENTION_DAYS: string(runRetentionDays)
    // The app trusts X-MS-CLIENT-PRINCIPAL only when the platform sets it (authentication on); without authentication
    // a function key is admin, as before.
    AUTH_ENABLED: string(authEnabled)
    ALLOW_FUNCTION_KEY_ADMIN: string(authEnabled ? allowFunctionKeyAdmin : true)
  }
  dependsOn: [
    // The host starts as soon as settings land; let it find its roles, containers and queues already there.
    storageBlobDataOwner
    storageQueueDataContributor
    keyVaultSecretsUser
    monitoringMetricsPublisher
    deploymentContainer
    queues
  ]
}

// App Service Authentication (Entra ID) in front of the HTTP API, switched on when authClientId names an app
// registration (always deployed, enabled or not, so turning it off again is a redeploy too). The platform validates
// the caller's token (issuer: this tenant; audience: the app registration) and passes its claims, app roles included,
// to the app in X-MS-CLIENT-PRINCIPAL. The HTTP triggers still require a function key. Unauthenticated requests get
// 401 unless function-key automation is allowed (then they reach the app, which gives a function key alone
// Exports.Admin only because ALLOW_FUNCTION_KEY_ADMIN says so). Properties checked against
// Microsoft.Web/sites/config@2024-04-01 (SiteAuthSettingsV2Properties) in Azure/bicep-types-az.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_63:Rule for site web config (HTTP logging) misapplied to authsettingsV2; requests are logged to Application Insights
  // checkov:skip=CKV_AZURE_65:Rule for site web config (detailed errors) misapplied to authsettingsV2; errors go to Application Insights
  // checkov:skip=CKV_AZURE_66:Rule for site web config (failed request tracing) misapplied to authsettingsV2; traces go to Application Insights
  // checkov:skip=CKV_AZURE_80:Rule for .NET apps misapplied to authsettingsV2; this is a Python 3.11 app
  // checkov:skip=CKV_AZURE_88:Azure Files content share is not used (or supported) by Flex Consumption; the package lives in blob storage
  // checkov:skip=CKV_AZURE_222:Rule for the site misapplied to authsettingsV2; see the suppression on functionApp
  // checkov:skip=CKV_AZURE_13:Authentication is this resource, on when authClientId is set; off, the function key guards the API as before
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: authEnabled
    }
    globalValidation: {
      requireAuthentication: !allowFunctionKeyAdmin
      unauthenticatedClientAction: allowFunctionKeyAdmin ? 'AllowAnonymous' : 'Return401'
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: authEnabled
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          // The app registration's client id and its default Application ID URI (api://<client id>).
          allowedAudiences: authEnabled ? [authClientId, 'api://${authClientId}'] : []
        }
      }
    }
  }
}

// Basic (publishing-profile) credentials off: deployments use Entra (azd, func publish, az functionapp deploy).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Role assignments for the app identity (exactly these; tests/infra checks the set)
// ---------------------------------------------------------------------------------------------------------------

resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageQueueDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, identity.id, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource monitoringMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Read-only access to just the CI export container when it lives in an existing account (possibly another group).
module ciExportReader 'modules/ci-export-reader.bicep' = if (useExternalCiAccount) {
  name: 'ci-export-reader-${resourceToken}'
  scope: resourceGroup(ciExportResourceGroupName)
  params: {
    storageAccountName: ciExportStorageAccountName
    containerName: ciExportContainerName
    principalId: identity.properties.principalId
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Optional grants for the deploying principal (never the app): set the key, upload the config
// ---------------------------------------------------------------------------------------------------------------

resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(keyVault.id, principalId, keyVaultSecretsOfficerRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
    principalId: principalId
    principalType: principalType
  }
}

resource deployerConfigContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(configContainer.id, principalId, storageBlobDataContributorRoleId)
  scope: configContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: principalId
    principalType: principalType
  }
}

// Lets the deployer set up and inspect the Customer Insights connection (and see what it wrote) in the app account.
resource deployerCiExportContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if ((!empty(principalId)) && (!useExternalCiAccount)) {
  name: guid(storage.id, ciExportContainerName, principalId, storageBlobDataContributorRoleId)
  scope: ciExportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: principalId
    principalType: principalType
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Optional grants for Customer Insights (app id 0bfc4568-a4ba-4c58-bd3e-5d3e76bd7fff): write its exports here
// ---------------------------------------------------------------------------------------------------------------

resource customerInsightsExportContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantCustomerInsights) {
  name: guid(storage.id, ciExportContainerName, customerInsightsPrincipalId, storageBlobDataContributorRoleId)
  scope: ciExportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: customerInsightsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource customerInsightsBlobDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantCustomerInsights) {
  name: guid(storage.id, customerInsightsPrincipalId, storageBlobDelegatorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegatorRoleId)
    principalId: customerInsightsPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Data lifecycle: run artifacts expire; the membership state never does
// ---------------------------------------------------------------------------------------------------------------

// Lifecycle prefixes are "<container>/<blob prefix>" matched from the start of the path: 'exporter-runs/' covers
// every blob in the runs container and nothing in 'exporter-state/' (tests/infra proves it against names.py).
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expireRunArtifacts'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${runsContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: runRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Diagnostic settings: who read the key, who touched the data, into the Log Analytics workspace
// ---------------------------------------------------------------------------------------------------------------

resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: keyVault
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'AuditEvent' // every secret read, by whom: the app identity, the deployer, anyone else
        enabled: true
      }
    ]
  }
}

// Data-plane logs of the run artifacts, state and config (blob) and of the stage queues (queue).
var storageLogCategories = [
  'StorageRead'
  'StorageWrite'
  'StorageDelete'
]

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalytics.id
    logs: [for category in storageLogCategories: {
      category: category
      enabled: true
    }]
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalytics.id
    logs: [for category in storageLogCategories: {
      category: category
      enabled: true
    }]
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Alerts: a run that needs someone, an export that stopped succeeding (queries read shared/events.py's events)
// ---------------------------------------------------------------------------------------------------------------

// The Functions Python worker forwards log records to the `traces` table without their `extra=` fields, so each
// event carries its fields as JSON after its name in the message (shared/events.py; tests/infra/test_alerts.py).
var runNeedsAttentionQuery = 'traces | where message startswith "RunFinished " | extend e = parse_json(substring(message, strlen("RunFinished "))) | extend export = tostring(e.export), runId = tostring(e.runId), status = tostring(e.status), sent = toint(e.sent), failed = toint(e.failed) | where status in ("failed", "held") or (status == "partial" and failed * 100.0 > ${partialFailedPercent} * (sent + failed)) | project timestamp, export, runId, status, sent, failed'
// Enabled = named by the newest TimerFired and by one at least staleAfterHours old (a new export gets its grace).
var exportStaleQuery = 'let staleAfter = ${staleAfterHours}h; let enabled = traces | where message startswith "TimerFired " | extend e = parse_json(substring(message, strlen("TimerFired "))) | mv-expand export = e.enabledExports to typeof(string) | summarize firstSeen = min(timestamp), lastSeen = max(timestamp) by export; let lastFired = toscalar(traces | where message startswith "TimerFired " | summarize max(timestamp)); let succeeded = traces | where message startswith "RunFinished " | extend e = parse_json(substring(message, strlen("RunFinished "))) | where tostring(e.status) == "succeeded" | summarize lastSucceeded = max(timestamp) by export = tostring(e.export); enabled | where lastSeen > lastFired - 10m and firstSeen < ago(staleAfter) | join kind=leftouter succeeded on export | where isnull(lastSucceeded) or lastSucceeded < ago(staleAfter) | project export, firstSeen, lastSucceeded'

resource alertActionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${abbrs.actionGroup}${resourceToken}'
  location: 'Global'
  tags: allTags
  properties: {
    groupShortName: 'ci-omnisend' // at most 12 characters; shown in the e-mail
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource runNeedsAttentionAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${abbrs.scheduledQueryRule}run-needs-attention-${resourceToken}'
  location: location
  tags: allTags
  kind: 'LogAlert'
  properties: {
    displayName: 'Omnisend export run needs someone (failed, held, or partial)'
    description: 'A run ended failed, held by the mass-exit guard, or partial with more than ${partialFailedPercent}% of its contacts failed. Open the run report: python -m shared report <export> <runId>, or GET /api/exports/<export>/runs/<runId>.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: runNeedsAttentionQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'export'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false // each bad run is its own incident; a later good run does not undo it
    actions: {
      actionGroups: [
        alertActionGroup.id
      ]
    }
  }
}

resource exportStaleAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${abbrs.scheduledQueryRule}export-stale-${resourceToken}'
  location: location
  tags: allTags
  kind: 'LogAlert'
  properties: {
    displayName: 'Omnisend export has not succeeded for ${staleAfterHours} hours'
    description: 'An export the timer considers enabled has had no succeeded run for ${staleAfterHours} hours: Customer Insights stopped exporting, runs keep failing, or the app stopped. Check GET /api/health and the export\'s runs.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    overrideQueryTimeRange: 'P2D'
    criteria: {
      allOf: [
        {
          query: exportStaleQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'export'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true // resolves by itself once the export succeeds again
    actions: {
      actionGroups: [
        alertActionGroup.id
      ]
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Outputs: names and endpoints only (azd stores them as environment values). Never a key or connection string.
// ---------------------------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = subscription().tenantId
output RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.name
output FUNCTION_APP_URL string = 'https://${functionApp.properties.defaultHostName}'
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output STORAGE_ACCOUNT_NAME string = storage.name
output CONFIG_CONTAINER_NAME string = configContainerName
output CI_EXPORT_STORAGE_ACCOUNT_NAME string = useExternalCiAccount ? ciExportStorageAccountName : storage.name
output CI_EXPORT_CONTAINER_NAME string = ciExportContainerName
output KEY_VAULT_NAME string = keyVault.name
output KEY_VAULT_URL string = keyVault.properties.vaultUri
output OMNISEND_API_KEY_SECRET_NAME string = omnisendApiKeySecretName
output APPLICATIONINSIGHTS_NAME string = appInsights.name
